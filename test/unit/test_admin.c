/* admin_ref_parse: the references of DELETE /admin/cache/<ref>, warm and `regmirror cache`. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "admin.h"

static enum regerr parse(const char *s, char *name, char *ref)
{
    const char *why = NULL;
    enum regerr result = admin_ref_parse(s, strlen(s), name, ref, &why);
    if (result != REG_OK)
        assert_non_null(why);
    return result;
}

static void test_good(void **state)
{
    static const struct {
        const char *in, *name, *ref;
    } cases[] = {
        {"library/alpine:3.19", "library/alpine", "3.19"},
        {"a:b", "a", "b"},
        {"ghcr.io/org/app:v1.2-rc_3", "ghcr.io/org/app", "v1.2-rc_3"},
        {"127.0.0.1-5000/x/y:latest", "127.0.0.1-5000/x/y", "latest"},
        {"library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
         "library/alpine",
         "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[API_NAME_MAX], ref[API_REF_MAX];
        assert_int_equal(parse(cases[i].in, name, ref), REG_OK);
        assert_string_equal(name, cases[i].name);
        assert_string_equal(ref, cases[i].ref);
    }
}

static void test_bad(void **state)
{
    static const struct {
        const char *in;
        enum regerr want;
    } cases[] = {
        {"", REG_ERR_TAG_INVALID},
        {"library/alpine", REG_ERR_TAG_INVALID},
        {"host:5000/alpine", REG_ERR_TAG_INVALID}, /* the port is no tag */
        {"library/alpine:", REG_ERR_TAG_INVALID},
        {"library/alpine:.x", REG_ERR_TAG_INVALID},
        {"library/alpine:a b", REG_ERR_TAG_INVALID},
        {"Library/alpine:1", REG_ERR_NAME_INVALID},
        {":1", REG_ERR_NAME_INVALID},
        {"a//b:1", REG_ERR_NAME_INVALID},
        {"a:b/c:1", REG_ERR_NAME_INVALID},
        {"@sha256:00", REG_ERR_NAME_INVALID},
        {"a@", REG_ERR_DIGEST_INVALID},
        {"a@sha256:abc", REG_ERR_DIGEST_INVALID},
        {"a@md5:00000000000000000000000000000000", REG_ERR_DIGEST_INVALID},
        {"a@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
         REG_ERR_DIGEST_INVALID},
        {"a:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
         REG_ERR_NAME_INVALID},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[API_NAME_MAX], ref[API_REF_MAX];
        assert_int_equal(parse(cases[i].in, name, ref), cases[i].want);
    }
}

static void test_lengths(void **state)
{
    char in[API_NAME_MAX + API_REF_MAX + 8], name[API_NAME_MAX], ref[API_REF_MAX];
    memset(in, 'a', API_NAME_MAX);
    strcpy(in + API_NAME_MAX, ":1");
    assert_int_equal(parse(in, name, ref), REG_ERR_NAME_INVALID);
    strcpy(in, "a:");
    memset(in + 2, 't', API_REF_MAX);
    in[2 + API_REF_MAX] = '\0';
    assert_int_equal(parse(in, name, ref), REG_ERR_TAG_INVALID);
    /* the length given, not the NUL, ends the reference */
    const char *why;
    assert_int_equal(admin_ref_parse("a:1xyz", 3, name, ref, &why), REG_OK);
    assert_string_equal(ref, "1");
}

static void test_pulls(void **state)
{
    struct digest d = {.algo = DIGEST_SHA256};
    memset(d.hex, 'a', 64);
    d.hex[64] = '\0';
    assert_int_equal(admin_pulls("x/y", &d), 0);
    admin_note_pull("x/y", &d);
    admin_note_pull("x/y", &d);
    admin_note_pull("x/z", &d);
    assert_int_equal(admin_pulls("x/y", &d), 2);
    assert_int_equal(admin_pulls("x/z", &d), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_pulls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
