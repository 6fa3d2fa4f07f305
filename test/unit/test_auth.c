/*
 * test_auth: the htpasswd parser (formats htpasswd writes, refused hash kinds, limits), the
 * Basic credentials parser, and checking against a real file: right and wrong passwords,
 * unknown users, the cache of verified pairs, reloads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.c"

/* htpasswd -nbB -C 4 alice secret (cost 4: fast tests) */
#define ALICE "alice:$2y$04$TKqkJji9J/NMYhBxDedhf.PhBTxulHdoVY/aTsnA.3Rbb040dXUZK"
#define ALICE_HASH "$2y$04$TKqkJji9J/NMYhBxDedhf.PhBTxulHdoVY/aTsnA.3Rbb040dXUZK"

static char *make_hash(const char *prefix, const char *pw)
{
    struct crypt_data cd;
    memset(&cd, 0, sizeof(cd));
    const char *setting = crypt_gensalt_rn(prefix, 4, NULL, 0, cd.setting, sizeof(cd.setting));
    assert_non_null(setting);
    const char *h = crypt_rn(pw, setting, &cd, (int)sizeof(cd));
    assert_non_null(h);
    return strdup(h);
}

static int parse(const char *text, struct auth_entries *e, char *err)
{
    return auth_htpasswd_parse(text, strlen(text), e, err, 256);
}

static void test_parse_htpasswd_output(void **state)
{
    struct auth_entries e;
    char err[256] = "";
    char *b = make_hash("$2b$", "x"), *c = make_hash("$6$", "y");
    char buf[1024];
    snprintf(buf, sizeof(buf), "# comment\n\n%s\r\n  bob:%s  \ncarol:%s", ALICE, b, c);
    assert_int_equal(parse(buf, &e, err), 0);
    assert_int_equal(e.n, 3);
    assert_string_equal(e.v[0].user, "alice");
    assert_string_equal(e.v[1].user, "bob");
    assert_string_equal(e.v[1].hash, b);
    assert_string_equal(e.v[2].user, "carol");
    auth_entries_free(&e);
    free(b);
    free(c);
}

static void test_parse_duplicates_keep_last(void **state)
{
    struct auth_entries e;
    char err[256];
    char *h1 = make_hash("$2y$", "one"), *h2 = make_hash("$2y$", "two");
    char buf[1024];
    snprintf(buf, sizeof(buf), "zed:%s\nann:%s\nzed:%s\n", h1, h1, h2);
    assert_int_equal(parse(buf, &e, err), 0);
    assert_int_equal(e.n, 2);
    assert_string_equal(e.v[0].user, "ann");
    assert_string_equal(e.v[1].user, "zed");
    assert_string_equal(e.v[1].hash, h2);
    auth_entries_free(&e);
    free(h1);
    free(h2);
}

static void test_parse_empty_file(void **state)
{
    struct auth_entries e;
    char err[256];
    assert_int_equal(parse("", &e, err), 0);
    assert_int_equal(e.n, 0);
    assert_int_equal(parse("# only\n\n   \n", &e, err), 0);
    assert_int_equal(e.n, 0);
    auth_entries_free(&e);
}

static void expect_error(const char *text, const char *want, const char *secret)
{
    struct auth_entries e = {(void *)1, 99};
    char err[256] = "";
    assert_int_equal(parse(text, &e, err), -1);
    assert_null(e.v);
    assert_int_equal(e.n, 0);
    if (!strstr(err, want))
        fail_msg("error \"%s\" lacks \"%s\"", err, want);
    if (secret && strstr(err, secret))
        fail_msg("error \"%s\" shows the hash", err);
}

static void test_parse_refuses_other_hashes(void **state)
{
    expect_error(ALICE "\neve:$apr1$Qd3D5yB1$mBRoHHNz4hxn0kkYxW3PH1\n",
                 "line 2 (user eve): an apr1", "mBRoHHNz4hxn0kkYxW3PH1");
    expect_error("eve:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1", "W6ph5Mm5Pz8G");
    expect_error("eve:$1$abc$def", "MD5-crypt", "$1$abc$def");
    expect_error("eve:plaintext", "plain-text", "plaintext");
    expect_error("eve:", "an empty hash", NULL);
    expect_error("eve:$2y$04$short", "malformed bcrypt", "$2y$04$short");
    expect_error("eve:$9$x$y", "unknown kind", NULL);
    expect_error("just-a-name\n", "line 1: expected user:hash", NULL);
    expect_error(":" ALICE_HASH, "user name is empty", NULL);
}

static void test_parse_limits(void **state)
{
    size_t n = AUTH_LINE_MAX + 10;
    char *big = malloc(n + 1);
    memset(big, 'a', n);
    big[n] = '\0';
    expect_error(big, "longer than", NULL);
    big[300] = ':';
    big[301] = '\0';
    expect_error(big, "user name is empty or longer", NULL);
    free(big);
    char nul[] = "a:b\0c\n";
    struct auth_entries e;
    char err[256];
    assert_int_equal(auth_htpasswd_parse(nul, sizeof(nul) - 1, &e, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "NUL"));
}

static void test_basic_parse(void **state)
{
    char u[AUTH_USER_MAX], p[AUTH_PASS_MAX];
    /* alice:secret */
    assert_int_equal(auth_basic_parse("Basic YWxpY2U6c2VjcmV0", u, sizeof(u), p, sizeof(p)), 0);
    assert_string_equal(u, "alice");
    assert_string_equal(p, "secret");
    /* scheme in any case, extra blanks; password with colons: "a:b:c" */
    assert_int_equal(auth_basic_parse("bASIC   YTpiOmM=  ", u, sizeof(u), p, sizeof(p)), 0);
    assert_string_equal(u, "a");
    assert_string_equal(p, "b:c");
    /* empty password "a:" */
    assert_int_equal(auth_basic_parse("Basic YTo=", u, sizeof(u), p, sizeof(p)), 0);
    assert_string_equal(p, "");
    /* bad forms */
    const char *bad[] = {"",
                         "Basic",
                         "Basic ",
                         "BasicYWxpY2U6c2VjcmV0",
                         "Bearer YWxpY2U6c2VjcmV0",
                         "Basic YWxpY2U",           /* not a multiple of 4 */
                         "Basic YWxpY2U6c2VjcmV0=", /* 23 chars */
                         "Basic YWxp=2U6",          /* data after padding */
                         "Basic YWxpY2U!c2VjcmV0",
                         "Basic YWxpY2U=", /* "alice": no colon */
                         "Basic YQBiOmM=", /* NUL in the user */
                         "Basic ====",
                         NULL};
    for (int i = 0; bad[i]; i++)
        if (auth_basic_parse(bad[i], u, sizeof(u), p, sizeof(p)) == 0)
            fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(auth_basic_parse(NULL, u, sizeof(u), p, sizeof(p)), -1);
    /* too long for the buffers */
    assert_int_equal(auth_basic_parse("Basic YWxpY2U6c2VjcmV0", u, 5, p, sizeof(p)), -1);
    assert_int_equal(auth_basic_parse("Basic YWxpY2U6c2VjcmV0", u, sizeof(u), p, 6), -1);
}

static char *write_file(const char *text)
{
    char *path = strdup("/tmp/test_auth_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_check(void **state)
{
    char *path = write_file("# users\n" ALICE "\n");
    char err[512];
    struct auth *a = auth_new("My \"Realm\"", path, err, sizeof(err));
    assert_non_null(a);
    assert_string_equal(auth_challenge(a), "Basic realm=\"My \\\"Realm\\\"\"");
    char user[AUTH_USER_MAX] = "";
    assert_true(auth_check(a, "Basic YWxpY2U6c2VjcmV0", "1.2.3.4", user)); /* alice:secret */
    assert_string_equal(user, "alice");
    /* the second time from the cache */
    bool cached = false;
    for (size_t i = 0; i < AUTH_CACHE_SLOTS; i++)
        cached |= a->cache[i].used;
    assert_true(cached);
    assert_true(auth_check(a, "Basic YWxpY2U6c2VjcmV0", "1.2.3.4", NULL));
    /* alice:secreT, bob:secret, no header, garbage */
    assert_false(auth_check(a, "Basic YWxpY2U6c2VjcmVU", "1.2.3.4", NULL));
    assert_false(auth_check(a, "Basic Ym9iOnNlY3JldA==", "1.2.3.4", NULL));
    assert_false(auth_check(a, NULL, "1.2.3.4", NULL));
    assert_false(auth_check(a, "Basic !", "1.2.3.4", NULL));
    auth_free(a);

    /* reload: a new file replaces the users and empties the cache */
    a = auth_new("r", path, err, sizeof(err));
    assert_non_null(a);
    assert_true(auth_check(a, "Basic YWxpY2U6c2VjcmV0", "x", NULL));
    char *h = make_hash("$2y$", "pw");
    char text[256];
    snprintf(text, sizeof(text), "bob:%s\n", h);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    a->checked_at = 0; /* as if a second had passed */
    assert_false(auth_check(a, "Basic YWxpY2U6c2VjcmV0", "x", NULL));
    assert_true(auth_check(a, "Basic Ym9iOnB3", "x", NULL)); /* bob:pw */
    /* a broken file keeps the users */
    f = fopen(path, "w");
    fputs("bob:$apr1$x$y\n", f);
    fclose(f);
    a->checked_at = 0;
    assert_true(auth_check(a, "Basic Ym9iOnB3", "x", NULL));
    /* a removed file too */
    unlink(path);
    a->checked_at = 0;
    assert_true(auth_check(a, "Basic Ym9iOnB3", "x", NULL));
    auth_free(a);
    free(h);
    free(path);
}

static void test_new_errors(void **state)
{
    char err[512];
    assert_null(auth_new("r", "/nonexistent/htpasswd", err, sizeof(err)));
    assert_non_null(strstr(err, "auth.htpasswd.path: cannot open /nonexistent/htpasswd"));
    assert_null(auth_new("r", "/tmp", err, sizeof(err)));
    assert_non_null(strstr(err, "not a regular file"));
    char *path = write_file("eve:$apr1$Qd3D5yB1$mBRoHHNz4hxn0kkYxW3PH1\n");
    assert_null(auth_new("r", path, err, sizeof(err)));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "line 1 (user eve)"));
    assert_null(strstr(err, "mBRoHHNz"));
    unlink(path);
    free(path);
}

int main(void)
{
    log_setup(LOG_ERROR, LOG_FORMAT_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_htpasswd_output),
        cmocka_unit_test(test_parse_duplicates_keep_last),
        cmocka_unit_test(test_parse_empty_file),
        cmocka_unit_test(test_parse_refuses_other_hashes),
        cmocka_unit_test(test_parse_limits),
        cmocka_unit_test(test_basic_parse),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_new_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
