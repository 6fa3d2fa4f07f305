#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"

static bool name_ok(const char *s)
{
    return reference_name_valid(s, strlen(s));
}

static bool tag_ok(const char *s)
{
    return reference_tag_valid(s, strlen(s));
}

static void test_name(void **state)
{
    static const char *const good[] = {
        "a",
        "library/ubuntu",
        "a/b/c/d",
        "foo.bar",
        "foo_bar",
        "foo__bar",
        "foo-bar",
        "foo---bar",
        "a0/1b",
        "0",
        "my.registry-name/sub_path__x/y",
    };
    static const char *const bad[] = {
        "",     "Library/ubuntu", "a//b", "/a",   "a/",   "..",  ".",        "a/../b", "a/./b",
        "a..b", "a___b",          "__a",  "a__",  "-a",   "a-",  "a.",       ".a",     "a._b",
        "a_.b", "a-.b",           "a-_b", "a_-b", "a/-b", "a b", "a:5000/b", "a@b",    "a/B",
        "ä",
    };
    char buf[300];
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!name_ok(good[i]))
            fail_msg("rejected \"%s\"", good[i]);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (name_ok(bad[i]))
            fail_msg("accepted \"%s\"", bad[i]);
    }

    /* 255 is the limit, whatever the shape. */
    memset(buf, 'a', sizeof(buf));
    assert_true(reference_name_valid(buf, 255));
    assert_false(reference_name_valid(buf, 256));
    buf[100] = '/';
    assert_true(reference_name_valid(buf, 255));
    assert_false(reference_name_valid(buf, 256));

    /* Only len bytes count; a NUL inside is invalid. */
    assert_true(reference_name_valid("abc/def", 3));
    assert_false(reference_name_valid("abc/def", 4));
    assert_false(reference_name_valid("ab\0c", 4));
    assert_false(reference_name_valid(NULL, 0));
}

static void test_tag(void **state)
{
    char buf[200];

    assert_true(tag_ok("latest"));
    assert_true(tag_ok("v1.2.3-rc.1_build"));
    assert_true(tag_ok("_private"));
    assert_true(tag_ok("A"));
    assert_true(tag_ok("9"));
    assert_false(tag_ok(""));
    assert_false(tag_ok(".hidden"));
    assert_false(tag_ok("-flag"));
    assert_false(tag_ok("a/b"));
    assert_false(tag_ok("a:b"));
    assert_false(tag_ok("a+b"));
    assert_false(tag_ok("sha256:abc"));
    assert_false(tag_ok("a b"));
    assert_false(reference_tag_valid("ab\0", 3));

    memset(buf, 'x', sizeof(buf));
    assert_true(reference_tag_valid(buf, 128));
    assert_false(reference_tag_valid(buf, 129));
}

static enum reference_range range(const char *h, uint64_t size, uint64_t *s, uint64_t *e)
{
    *s = 0xdead;
    *e = 0xbeef;
    return reference_parse_range(h, size, s, e);
}

static void test_range_ok(void **state)
{
    uint64_t s, e;

    assert_int_equal(range("bytes=0-0", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 0);
    assert_int_equal(e, 0);
    assert_int_equal(range("bytes=5-", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 5);
    assert_int_equal(e, 9);
    assert_int_equal(range("bytes=-3", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 7);
    assert_int_equal(e, 9);
    /* Suffix longer than the resource selects all of it. */
    assert_int_equal(range("bytes=-30", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 0);
    assert_int_equal(e, 9);
    /* end >= size clamps. */
    assert_int_equal(range("bytes=2-100", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 2);
    assert_int_equal(e, 9);
    assert_int_equal(range("bytes=9-9", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 9);
    assert_int_equal(e, 9);
    /* Unit case, whitespace and empty list elements tolerated. */
    assert_int_equal(range("Bytes=1-2", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(range(" bytes= 1-2 ", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(range("bytes=1-2,", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(range("bytes=, ,1-2", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 1);
    assert_int_equal(e, 2);
    /* Overflowing numbers saturate. */
    assert_int_equal(range("bytes=3-99999999999999999999999999", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 3);
    assert_int_equal(e, 9);
    assert_int_equal(range("bytes=-99999999999999999999999999", 10, &s, &e), REFERENCE_RANGE_OK);
    assert_int_equal(s, 0);
    assert_int_equal(e, 9);
    assert_int_equal(range("bytes=18446744073709551614-", UINT64_MAX, &s, &e), REFERENCE_RANGE_OK);
    assert_true(s == UINT64_MAX - 1 && e == UINT64_MAX - 1);
}

static void test_range_unsatisfiable(void **state)
{
    uint64_t s, e;

    assert_int_equal(range("bytes=-0", 10, &s, &e), REFERENCE_RANGE_UNSATISFIABLE);
    assert_int_equal(range("bytes=10-", 10, &s, &e), REFERENCE_RANGE_UNSATISFIABLE);
    assert_int_equal(range("bytes=11-20", 10, &s, &e), REFERENCE_RANGE_UNSATISFIABLE);
    assert_int_equal(range("bytes=0-0", 0, &s, &e), REFERENCE_RANGE_UNSATISFIABLE);
    assert_int_equal(range("bytes=-5", 0, &s, &e), REFERENCE_RANGE_UNSATISFIABLE);
    assert_int_equal(range("bytes=99999999999999999999999-", 10, &s, &e),
                     REFERENCE_RANGE_UNSATISFIABLE);
    /* Outputs untouched. */
    assert_int_equal(s, 0xdead);
    assert_int_equal(e, 0xbeef);
}

static void test_range_ignore(void **state)
{
    static const char *const ignored[] = {
        "",           "bytes",         "bytes=",        "bytes=-",
        "bytes=a-b",  "bytes=1-2,3-4", "bytes=1-2, -3", "items=1-2",
        "bytes 1-2",  "bytes =1-2",    "bytes=5-3",     "bytes=1 - 2",
        "bytes=+1-2", "bytes=1-+2",    "bytes=0x1-2",   "bytes=1-2-3",
        "bytes=--1",  "bytes=1-2;x",   "byte=1-2",      "bytesx=1-2",
    };
    uint64_t s, e;
    size_t i;

    for (i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
        if (range(ignored[i], 10, &s, &e) != REFERENCE_RANGE_IGNORE)
            fail_msg("not ignored: \"%s\"", ignored[i]);
    }
    assert_int_equal(range(NULL, 10, &s, &e), REFERENCE_RANGE_IGNORE);
}

static void test_content_range(void **state)
{
    static const char *const bad[] = {
        "",
        "5",
        "-5",
        "5-",
        "a-b",
        "5-4",
        "0-5/10",
        "bytes 0-5",
        "bytes 0-10/10",
        "bytes 0-5/x",
        "bytes */10",
        "0 - 5",
        "+0-5",
        "0-5,6-7",
        "bytes:0-5",
        "0-99999999999999999999999",
    };
    uint64_t s = 0, e = 0;
    size_t i;

    assert_int_equal(reference_parse_content_range("0-1023", &s, &e), 0);
    assert_int_equal(s, 0);
    assert_int_equal(e, 1023);
    assert_int_equal(reference_parse_content_range("1024-1024", &s, &e), 0);
    assert_int_equal(s, 1024);
    assert_int_equal(e, 1024);
    assert_int_equal(reference_parse_content_range("bytes 10-19/*", &s, &e), 0);
    assert_int_equal(s, 10);
    assert_int_equal(e, 19);
    assert_int_equal(reference_parse_content_range("bytes 10-19/20", &s, &e), 0);
    assert_int_equal(reference_parse_content_range("bytes 0-9/10", &s, &e), 0);
    assert_int_equal(reference_parse_content_range("bytes=10-19", &s, &e), 0);
    assert_int_equal(reference_parse_content_range(" 10-19 ", &s, &e), 0);
    assert_int_equal(
        reference_parse_content_range("18446744073709551615-18446744073709551615", &s, &e), 0);
    assert_true(s == UINT64_MAX && e == UINT64_MAX);

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (reference_parse_content_range(bad[i], &s, &e) != -1)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(reference_parse_content_range(NULL, &s, &e), -1);
}

static void expect_query(const char *q, const char *key, const char *want)
{
    char *got = reference_query_get(q, key);

    if (want == NULL) {
        if (got != NULL)
            fail_msg("%s in \"%s\": got \"%s\", want absent", key, q, got);
    } else {
        if (got == NULL)
            fail_msg("%s in \"%s\": absent, want \"%s\"", key, q, want);
        assert_string_equal(got, want);
    }
    free(got);
}

static void test_query(void **state)
{
    char *big;

    expect_query("n=10&last=foo", "n", "10");
    expect_query("n=10&last=foo", "last", "foo");
    expect_query("n=10&last=foo", "nope", NULL);
    expect_query("n=10&last=foo", "la", NULL);
    expect_query("last=a%2Fb+c", "last", "a/b c");
    expect_query("digest=sha256%3Aabc", "digest", "sha256:abc");
    expect_query("x=%zz", "x", NULL);
    expect_query("x=%4", "x", NULL);
    expect_query("x=%", "x", NULL);
    expect_query("x=a%00b", "x", NULL);
    /* First occurrence wins, even over a later good one. */
    expect_query("n=1&n=2", "n", "1");
    expect_query("n=%zz&n=2", "n", NULL);
    expect_query("flag&n=2", "flag", "");
    expect_query("flag=&n=2", "flag", "");
    expect_query("a=1&&b=2", "b", "2");
    expect_query("", "a", NULL);
    expect_query("=x", "", "x");
    /* Keys are decoded too. */
    expect_query("la%73t=z", "last", "z");
    expect_query("a=1=2", "a", "1=2");
    assert_null(reference_query_get(NULL, "a"));

    big = malloc(REFERENCE_QUERY_VALUE_MAX + 8);
    assert_non_null(big);
    memcpy(big, "v=", 2);
    memset(big + 2, 'x', REFERENCE_QUERY_VALUE_MAX);
    big[2 + REFERENCE_QUERY_VALUE_MAX] = '\0';
    expect_query(big, "v", big + 2);
    big[2 + REFERENCE_QUERY_VALUE_MAX] = 'x';
    big[3 + REFERENCE_QUERY_VALUE_MAX] = '\0';
    expect_query(big, "v", NULL);
    free(big);
}

static void test_url_decode_encode(void **state)
{
    char *s;

    s = reference_url_decode("a%2Fb+c%41%e2%82%ac", 19);
    assert_non_null(s);
    assert_string_equal(s, "a/b+cA\xe2\x82\xac");
    free(s);
    s = reference_url_decode("abc%2", 3);
    assert_non_null(s);
    assert_string_equal(s, "abc");
    free(s);
    s = reference_url_decode("", 0);
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
    assert_null(reference_url_decode("abc%2", 5));
    assert_null(reference_url_decode("%zz", 3));
    assert_null(reference_url_decode("%00", 3));
    assert_null(reference_url_decode("a\0b", 3));
    assert_null(reference_url_decode(NULL, 0));

    s = reference_url_encode("library/ubuntu:1.0 x&y=z~_-.\xc3\xa9");
    assert_non_null(s);
    assert_string_equal(s, "library%2Fubuntu%3A1.0%20x%26y%3Dz~_-.%C3%A9");
    free(s);
    s = reference_url_encode("");
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
    assert_null(reference_url_encode(NULL));

    /* Round trip through a query. */
    {
        const char *raw = "a b+c/d%e&f=g";
        char *enc = reference_url_encode(raw);
        char q[128];
        char *back;

        assert_non_null(enc);
        snprintf(q, sizeof(q), "k=%s&z=1", enc);
        back = reference_query_get(q, "k");
        assert_non_null(back);
        assert_string_equal(back, raw);
        free(back);
        free(enc);
    }
}

static void test_parse_uint(void **state)
{
    uint64_t v = 7;

    assert_int_equal(reference_parse_uint("100", &v), 0);
    assert_int_equal(v, 100);
    assert_int_equal(reference_parse_uint("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(reference_parse_uint("007", &v), 0);
    assert_int_equal(v, 7);
    assert_int_equal(reference_parse_uint("18446744073709551615", &v), 0);
    assert_true(v == UINT64_MAX);
    v = 5;
    assert_int_equal(reference_parse_uint("18446744073709551616", &v), -1);
    assert_int_equal(reference_parse_uint("", &v), -1);
    assert_int_equal(reference_parse_uint("-1", &v), -1);
    assert_int_equal(reference_parse_uint("+1", &v), -1);
    assert_int_equal(reference_parse_uint(" 1", &v), -1);
    assert_int_equal(reference_parse_uint("1 ", &v), -1);
    assert_int_equal(reference_parse_uint("1e3", &v), -1);
    assert_int_equal(reference_parse_uint("0x10", &v), -1);
    assert_int_equal(reference_parse_uint(NULL, &v), -1);
    assert_int_equal(v, 5);
}

static void test_query_lookup(void **state)
{
    char *v;
    char longq[REFERENCE_QUERY_VALUE_MAX + 16] = "ns=";
    memset(longq + 3, 'a', REFERENCE_QUERY_VALUE_MAX + 1);
    longq[REFERENCE_QUERY_VALUE_MAX + 4] = '\0';

    assert_int_equal(reference_query_lookup("a=1&ns=ghcr.io", "ns", &v), 1);
    assert_string_equal(v, "ghcr.io");
    free(v);
    assert_int_equal(reference_query_lookup("ns", "ns", &v), 1);
    assert_string_equal(v, "");
    free(v);
    assert_int_equal(reference_query_lookup("a=1", "ns", &v), 0);
    assert_null(v);
    assert_int_equal(reference_query_lookup(NULL, "ns", &v), 0);
    assert_null(v);
    /* Present but unusable: told apart from absent. */
    assert_int_equal(reference_query_lookup("ns=%00", "ns", &v), -1);
    assert_null(v);
    assert_int_equal(reference_query_lookup("ns=%zz", "ns", &v), -1);
    assert_int_equal(reference_query_lookup(longq, "ns", &v), -1);
    assert_null(v);
    /* The first occurrence decides. */
    assert_int_equal(reference_query_lookup("ns=%00&ns=ghcr.io", "ns", &v), -1);
}

static void test_host(void **state)
{
    static const char *const good[] = {"ghcr.io",        "docker.io",   "localhost",
                                       "localhost:5000", "127.0.0.1:1", "a",
                                       "A-b.C9",         "x.y:65535",   "registry-1.docker.io"};
    static const char *const bad[] = {"",         ".",     "a.",  ".a",  "a..b", "-a",    "a-",
                                      "a-.b",     "a.-b",  "a:",  ":1",  "a:0",  "a:01",  "a:65536",
                                      "a:123456", "a:1:2", "a_b", "a/b", "a b",  "[::1]", "a:x"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(reference_host_valid(good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (reference_host_valid(bad[i], strlen(bad[i])))
            fail_msg("accepted %s", bad[i]);
    }
    assert_false(reference_host_valid("a\0b", 3));
    char label[80];
    memset(label, 'a', 64);
    assert_false(reference_host_valid(label, 64));
    assert_true(reference_host_valid(label, 63));
    char longhost[REFERENCE_HOST_MAX + 2];
    for (size_t i = 0; i < sizeof(longhost); i++)
        longhost[i] = i % 2 ? '.' : 'a';
    assert_true(reference_host_valid(longhost, REFERENCE_HOST_MAX));
    assert_false(reference_host_valid(longhost, REFERENCE_HOST_MAX + 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name),         cmocka_unit_test(test_tag),
        cmocka_unit_test(test_range_ok),     cmocka_unit_test(test_range_unsatisfiable),
        cmocka_unit_test(test_range_ignore), cmocka_unit_test(test_content_range),
        cmocka_unit_test(test_query),        cmocka_unit_test(test_url_decode_encode),
        cmocka_unit_test(test_parse_uint),   cmocka_unit_test(test_query_lookup),
        cmocka_unit_test(test_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
