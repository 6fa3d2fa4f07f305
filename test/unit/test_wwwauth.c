/*
 * test_wwwauth: WWW-Authenticate parsing with the header forms real registries send (Docker
 * Hub, distribution, ghcr.io, quay.io, ECR, ACR, Harbor), RFC 7235 corner cases and bad input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "wwwauth.h"

static int parse1(struct wwwauth *w, const char *s)
{
    wwwauth_init(w);
    return wwwauth_parse(w, s, strlen(s));
}

static void check_bearer(const struct wwwauth_challenge *c, const char *realm, const char *service,
                         const char *scope, const char *error)
{
    assert_non_null(c);
    assert_int_equal(c->scheme, WWWAUTH_BEARER);
    assert_string_equal(c->realm, realm);
    assert_string_equal(c->service, service);
    assert_string_equal(c->scope, scope);
    assert_string_equal(c->error, error);
}

static void test_docker_hub(void **state)
{
    struct wwwauth w;
    assert_int_equal(parse1(&w, "Bearer realm=\"https://auth.docker.io/token\","
                                "service=\"registry.docker.io\","
                                "scope=\"repository:library/alpine:pull\""),
                     0);
    assert_int_equal(w.n, 1);
    check_bearer(&w.ch[0], "https://auth.docker.io/token", "registry.docker.io",
                 "repository:library/alpine:pull", "");

    /* A private or missing repository, anonymously. */
    assert_int_equal(parse1(&w, "Bearer realm=\"https://auth.docker.io/token\","
                                "service=\"registry.docker.io\","
                                "scope=\"repository:someone/private:pull\","
                                "error=\"insufficient_scope\""),
                     0);
    check_bearer(&w.ch[0], "https://auth.docker.io/token", "registry.docker.io",
                 "repository:someone/private:pull", "insufficient_scope");
}

static void test_distribution(void **state)
{
    struct wwwauth w;
    /* Commas inside a quoted value belong to the value. */
    assert_int_equal(parse1(&w, "Bearer realm=\"https://auth.example.com/token\","
                                "service=\"registry.example.com\","
                                "scope=\"repository:samalba/my-app:pull,push\""),
                     0);
    assert_int_equal(w.n, 1);
    check_bearer(&w.ch[0], "https://auth.example.com/token", "registry.example.com",
                 "repository:samalba/my-app:pull,push", "");

    assert_int_equal(parse1(&w, "Bearer realm=\"https://auth.example.com/token\","
                                "service=\"registry.example.com\",error=\"invalid_token\""),
                     0);
    check_bearer(&w.ch[0], "https://auth.example.com/token", "registry.example.com", "",
                 "invalid_token");

    /* Several scopes in one parameter, space-separated (a cross-repository mount). */
    assert_int_equal(parse1(&w, "Bearer realm=\"https://a/token\",service=\"s\","
                                "scope=\"repository:a/b:pull repository:c/d:pull,push\""),
                     0);
    assert_string_equal(w.ch[0].scope, "repository:a/b:pull repository:c/d:pull,push");

    /* htpasswd auth. */
    assert_int_equal(parse1(&w, "Basic realm=\"Registry Realm\""), 0);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.ch[0].scheme, WWWAUTH_BASIC);
    assert_string_equal(w.ch[0].realm, "Registry Realm");
}

static void test_other_registries(void **state)
{
    struct wwwauth w;
    assert_int_equal(parse1(&w, "Bearer realm=\"https://ghcr.io/token\",service=\"ghcr.io\","
                                "scope=\"repository:user/image:pull\""),
                     0);
    check_bearer(&w.ch[0], "https://ghcr.io/token", "ghcr.io", "repository:user/image:pull", "");

    assert_int_equal(parse1(&w, "Bearer realm=\"https://quay.io/v2/auth\",service=\"quay.io\""), 0);
    check_bearer(&w.ch[0], "https://quay.io/v2/auth", "quay.io", "", "");

    assert_int_equal(parse1(&w, "Basic realm=\"https://123456789012.dkr.ecr.us-east-1."
                                "amazonaws.com/\",service=\"ecr.amazonaws.com\""),
                     0);
    assert_int_equal(w.ch[0].scheme, WWWAUTH_BASIC);
    assert_string_equal(w.ch[0].realm, "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/");
    assert_string_equal(w.ch[0].service, ""); /* not a Basic parameter */

    assert_int_equal(parse1(&w, "Bearer realm=\"https://harbor.local/service/token\","
                                "service=\"harbor-registry\""),
                     0);
    check_bearer(&w.ch[0], "https://harbor.local/service/token", "harbor-registry", "", "");
}

static void test_several_challenges(void **state)
{
    struct wwwauth w;
    /* RFC 7235 section 4.1's example, with a Bearer added. */
    assert_int_equal(parse1(&w, "Newauth realm=\"apps\", type=1, "
                                "title=\"Login to \\\"apps\\\"\", Basic realm=\"simple\", "
                                "Bearer realm=\"https://t/token\", service=svc"),
                     0);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.ch[0].scheme, WWWAUTH_BASIC);
    assert_string_equal(w.ch[0].realm, "simple");
    check_bearer(&w.ch[1], "https://t/token", "svc", "", "");
    assert_ptr_equal(wwwauth_find(&w, WWWAUTH_BEARER), &w.ch[1]);
    assert_ptr_equal(wwwauth_find(&w, WWWAUTH_BASIC), &w.ch[0]);

    /* Across several header values. */
    wwwauth_init(&w);
    const char *a = "Negotiate", *b = "Basic realm=\"r\"", *c = "Bearer realm=\"x\"";
    assert_int_equal(wwwauth_parse(&w, a, strlen(a)), 0);
    assert_int_equal(wwwauth_parse(&w, b, strlen(b)), 0);
    assert_int_equal(wwwauth_parse(&w, c, strlen(c)), 0);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.ch[0].scheme, WWWAUTH_BASIC);
    assert_int_equal(w.ch[1].scheme, WWWAUTH_BEARER);

    /* Schemes without parameters, and token68 forms. */
    assert_int_equal(parse1(&w, "Basic, Negotiate abc+/=="), 0);
    assert_int_equal(w.n, 1);
    assert_string_equal(w.ch[0].realm, "");
    assert_int_equal(parse1(&w, "Negotiate YII=, Bearer realm=\"r\""), 0);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.ch[0].scheme, WWWAUTH_BEARER);
    /* "realm=" alone is a token68 by the grammar, not an empty realm. */
    assert_int_equal(parse1(&w, "Bearer realm="), 0);
    assert_int_equal(w.n, 1);
    assert_string_equal(w.ch[0].realm, "");
    assert_int_equal(parse1(&w, "Negotiate"), 0);
    assert_int_equal(w.n, 0);
    assert_null(wwwauth_find(&w, WWWAUTH_BEARER));
}

static void test_whitespace_and_case(void **state)
{
    struct wwwauth w;
    assert_int_equal(parse1(&w, "  bEaReR   REALM = \"https://a/t\" ,\tService=\"s\" , "
                                "SCOPE=\"repository:x:pull\" ,, error = invalid_token  "),
                     0);
    assert_int_equal(w.n, 1);
    check_bearer(&w.ch[0], "https://a/t", "s", "repository:x:pull", "invalid_token");
    /* ':' is no token character: an unquoted scope stops there. */
    assert_int_equal(parse1(&w, "Bearer scope=repository:x:pull"), -1);

    assert_int_equal(parse1(&w, ", ,Bearer realm=\"r\","), 0);
    assert_int_equal(w.n, 1);
    assert_int_equal(parse1(&w, ""), 0);
    assert_int_equal(w.n, 0);
    assert_int_equal(parse1(&w, " , "), 0);
    assert_int_equal(w.n, 0);
}

static void test_quoting(void **state)
{
    struct wwwauth w;
    assert_int_equal(parse1(&w, "Bearer realm=\"a\\\"b\\\\c,d=e\",scope=\"\""), 0);
    assert_string_equal(w.ch[0].realm, "a\"b\\c,d=e");
    assert_string_equal(w.ch[0].scope, "");
    /* Tabs and bytes >= 0x80 are allowed inside quotes. */
    assert_int_equal(parse1(&w, "Bearer realm=\"a\tb\xc3\xa9\""), 0);
    assert_string_equal(w.ch[0].realm, "a\tb\xc3\xa9");
    /* Repeated scopes join; repeated realm keeps the first. */
    assert_int_equal(parse1(&w, "Bearer realm=\"one\",scope=\"a:b:pull\",realm=\"two\","
                                "scope=\"c:d:pull\""),
                     0);
    assert_string_equal(w.ch[0].realm, "one");
    assert_string_equal(w.ch[0].scope, "a:b:pull c:d:pull");
}

static void test_malformed(void **state)
{
    static const char *const bad[] = {
        "Bearer realm=\"unterminated",
        "Bearer realm=\"ends with backslash\\",
        "Bearer realm=\"a\" service=\"b\"",
        "Bearer =\"a\"",
        "Bearer=\"a\"",
        "Bearer\"a\"",
        "realm=\"a\"",
        "=",
        "\"Bearer\"",
        "Bearer realm=\"a\x01\"",
        "Bearer realm=\"a\x7f\"",
        "Bearer realm=\"a\\\x01\"",
        "Bearer realm=\"a\",scope=\"b\"x",
        "Bearer realm=a b",
        "Bearer realm=\"a\";x",
        "(Bearer)",
    };
    struct wwwauth w;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse1(&w, bad[i]) != -1)
            fail_msg("accepted: %s", bad[i]);
        assert_int_equal(w.n, 0);
    }
    /* A NUL inside is a bad byte, not the end. */
    wwwauth_init(&w);
    assert_int_equal(wwwauth_parse(&w, "Bearer realm=\"a\0b\"", 18), -1);
    assert_int_equal(w.n, 0);
    /* Challenges completed before the error are kept. */
    assert_int_equal(parse1(&w, "Basic realm=\"ok\", Bearer realm=\"bad"), -1);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.ch[0].scheme, WWWAUTH_BASIC);
}

static void test_caps(void **state)
{
    struct wwwauth w;
    char *big = malloc(WWWAUTH_INPUT_MAX + 64);

    /* A realm that fits exactly, and one byte over. */
    strcpy(big, "Bearer realm=\"");
    size_t off = strlen(big);
    memset(big + off, 'r', WWWAUTH_REALM_MAX - 1);
    strcpy(big + off + WWWAUTH_REALM_MAX - 1, "\"");
    assert_int_equal(parse1(&w, big), 0);
    assert_int_equal(strlen(w.ch[0].realm), WWWAUTH_REALM_MAX - 1);
    memset(big + off, 'r', WWWAUTH_REALM_MAX);
    strcpy(big + off + WWWAUTH_REALM_MAX, "\"");
    assert_int_equal(parse1(&w, big), -1);
    assert_int_equal(w.n, 0);

    /* Joined scopes over the cap. */
    strcpy(big, "Bearer realm=\"r\"");
    for (int i = 0; i < 40; i++)
        strcat(big,
               ",scope=\"repository:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:pull\"");
    assert_int_equal(parse1(&w, big), -1);

    /* Long values of unknown parameters are skipped, not refused. */
    strcpy(big, "Bearer realm=\"r\",x=\"");
    off = strlen(big);
    memset(big + off, 'x', 8000);
    strcpy(big + off + 8000, "\"");
    assert_int_equal(parse1(&w, big), 0);
    assert_string_equal(w.ch[0].realm, "r");

    /* The whole value over its cap. */
    memset(big, ' ', WWWAUTH_INPUT_MAX + 1);
    big[WWWAUTH_INPUT_MAX + 1] = '\0';
    assert_int_equal(parse1(&w, big), -1);

    /* More challenges than kept: the rest are skipped. */
    strcpy(big, "");
    for (int i = 0; i < WWWAUTH_MAX_CHALLENGES + 3; i++)
        strcat(big, "Basic realm=\"r\", ");
    assert_int_equal(parse1(&w, big), 0);
    assert_int_equal(w.n, WWWAUTH_MAX_CHALLENGES);
    assert_int_equal(wwwauth_parse(&w, "Bearer realm=\"x\"", 16), 0);
    assert_int_equal(w.n, WWWAUTH_MAX_CHALLENGES);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_docker_hub),          cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_other_registries),    cmocka_unit_test(test_several_challenges),
        cmocka_unit_test(test_whitespace_and_case), cmocka_unit_test(test_quoting),
        cmocka_unit_test(test_malformed),           cmocka_unit_test(test_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
