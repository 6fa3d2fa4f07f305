/*
 * test_realm: which token realms get an upstream's account, with the hosts real registries
 * use (Docker Hub, ghcr.io, quay.io, GitLab, ECR), IP literals, localhost and bad input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "realm.h"

#define MAY(u, r) realm_may_get_credentials((u), (r))

static void test_same_registrable_domain(void **state)
{
    assert_true(MAY("https://registry-1.docker.io", "https://auth.docker.io/token"));
    assert_true(MAY("https://ghcr.io", "https://ghcr.io/token"));
    assert_true(MAY("https://quay.io", "https://quay.io/v2/auth"));
    assert_true(MAY("https://registry.gitlab.com", "https://gitlab.com/jwt/auth"));
    assert_true(MAY("https://registry.example.co.uk", "https://auth.example.co.uk/t"));
    /* Case and a trailing dot do not matter; the port does not either. */
    assert_true(MAY("https://Registry-1.Docker.IO", "https://AUTH.docker.io./token"));
    assert_true(MAY("https://registry.example.com:5000", "https://auth.example.com:8443/t"));
}

static void test_other_domains_refused(void **state)
{
    assert_false(MAY("https://registry-1.docker.io", "https://evil.example/token"));
    assert_false(MAY("https://registry-1.docker.io", "https://docker.io.evil.example/token"));
    assert_false(MAY("https://registry-1.docker.io", "https://evildocker.io/token"));
    /* Siblings under a public suffix are different owners. */
    assert_false(MAY("https://a.github.io", "https://b.github.io/token"));
    assert_false(MAY("https://registry.example.co.uk", "https://other.co.uk/t"));
    assert_false(MAY("https://registry.freedesktop.org", "https://gitlab.freedesktop.org/jwt"));
    /* A realm on a public suffix itself. */
    assert_false(MAY("https://registry.example.com", "https://com/token"));
}

static void test_scheme(void **state)
{
    /* Never in the clear when the upstream is https; an http upstream may use either. */
    assert_false(MAY("https://registry-1.docker.io", "http://auth.docker.io/token"));
    assert_true(MAY("http://registry.example.com", "http://auth.example.com/token"));
    assert_true(MAY("http://registry.example.com", "https://auth.example.com/token"));
    assert_false(MAY("https://registry.example.com", "ftp://auth.example.com/token"));
    assert_false(MAY("https://registry.example.com", "file:///etc/passwd"));
}

static void test_ip_literals_and_local_names(void **state)
{
    /* An IP-literal upstream: that address only, any port. */
    assert_true(MAY("http://127.0.0.1:5000", "http://127.0.0.1:5001/token"));
    assert_false(MAY("http://127.0.0.1:5000", "http://127.0.0.2:5001/token"));
    assert_false(MAY("http://127.0.0.1:5000", "http://localhost:5001/token"));
    assert_false(MAY("http://10.0.0.1", "http://0.1/token"));
    assert_true(MAY("https://[::1]:5000", "https://[0:0::1]/token"));
    assert_false(MAY("https://[::1]:5000", "https://[::2]/token"));
    assert_false(MAY("https://[::1]:5000", "https://127.0.0.1/token"));
    /* A name upstream never sends to an address, even one it resolves to. */
    assert_false(MAY("https://registry.example.com", "https://127.0.0.1/token"));
    /* No registrable domain: the same host only. */
    assert_true(MAY("http://localhost:5000", "http://localhost:5001/token"));
    assert_false(MAY("http://localhost:5000", "http://127.0.0.1/token"));
    assert_true(MAY("http://registry:5000", "http://registry/token"));
    assert_false(MAY("http://registry:5000", "http://auth/token"));
}

static void test_bad_input(void **state)
{
    assert_false(MAY("https://registry.example.com", ""));
    assert_false(MAY("https://registry.example.com", "auth.example.com/token"));
    assert_false(MAY("https://registry.example.com", "https://"));
    assert_false(MAY("https://registry.example.com", "https://user:pw@auth.example.com/t"));
    assert_false(MAY("https://registry.example.com", "https://user@auth.example.com/t"));
    assert_false(MAY("https://registry.example.com", "https://[zz]/t"));
    assert_false(MAY("", "https://auth.example.com/t"));
    assert_false(MAY(NULL, "https://auth.example.com/t"));
    assert_false(MAY("https://registry.example.com", NULL));
    char long_host[400] = "https://";
    memset(long_host + 8, 'a', 300);
    strcpy(long_host + 308, ".example.com/t");
    assert_false(MAY("https://registry.example.com", long_host));
}

static void test_describe(void **state)
{
    char buf[320];
    assert_int_equal(realm_describe("https://registry-1.docker.io", buf, sizeof(buf)), 0);
    assert_string_equal(buf,
                        "the realm named by the upstream's challenge, if on docker.io (https)");
    assert_int_equal(realm_describe("http://127.0.0.1:5000", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "the realm named by the upstream's challenge, if on the address "
                             "127.0.0.1 itself (http or https)");
    assert_int_equal(realm_describe("http://localhost:5000", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "the realm named by the upstream's challenge, if on the host "
                             "localhost itself (http or https)");
    assert_int_equal(realm_describe("nonsense", buf, sizeof(buf)), -1);
    assert_string_equal(buf, "");
    assert_int_equal(realm_describe("https://registry-1.docker.io", buf, 10), -1);
    assert_string_equal(buf, "");
    assert_int_equal(realm_describe("https://registry-1.docker.io", buf, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_registrable_domain),
        cmocka_unit_test(test_other_domains_refused),
        cmocka_unit_test(test_scheme),
        cmocka_unit_test(test_ip_literals_and_local_names),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
