/* The write policy of a pull-through cache, from the config alone (writepolicy_request). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "writepolicy.h"

static struct config load(const char *yaml)
{
    struct config cfg;
    struct config_diag d;
    assert_int_equal(config_load_string(yaml, strlen(yaml), "test.yml", NULL, &cfg, &d), 0);
    config_diag_free(&d);
    return cfg;
}

static enum regerr decide(const struct config *cfg, const char *name, const char *user)
{
    struct api_route rt = {.kind = API_ROUTE_UPLOAD_START};
    char why[256] = "";
    snprintf(rt.name, sizeof(rt.name), "%s", name);
    enum regerr e = writepolicy_request(cfg, &rt, user, why, sizeof(why));
    assert_true(e == REG_OK || *why);
    return e;
}

#define BASE "version: 0.1\nstorage:\n  inmemory:\n"
#define PROXY "proxy:\n  remoteurl: https://registry-1.docker.io\n"
#define REMOTES                                                                                    \
    "  remotes:\n    - host: ghcr.io\n      remoteurl: https://ghcr.io\n"                          \
    "    - host: Reg.Example:5000\n      remoteurl: https://reg.example:5000\n"

static void test_without_proxy_everything_goes(void **state)
{
    (void)state;
    struct config cfg = load(BASE);
    assert_int_equal(decide(&cfg, "org/app", NULL), REG_OK);
    assert_int_equal(decide(&cfg, "ghcr.io/org/app", NULL), REG_OK);
    config_free(&cfg);
}

static void test_proxy_is_read_only_by_default(void **state)
{
    (void)state;
    struct config cfg = load(BASE PROXY REMOTES);
    assert_int_equal(decide(&cfg, "org/app", NULL), REG_ERR_UNSUPPORTED);
    assert_int_equal(decide(&cfg, "ghcr.io/org/app", NULL), REG_ERR_UNSUPPORTED);
    assert_int_equal(decide(&cfg, "", NULL), REG_ERR_UNSUPPORTED);
    config_free(&cfg);
}

static void test_remote_namespaces_are_reserved(void **state)
{
    (void)state;
    struct config cfg = load(BASE PROXY "  push: true\n  shadow: true\n" REMOTES);
    assert_int_equal(decide(&cfg, "org/app", NULL), REG_OK);
    assert_int_equal(decide(&cfg, "ghcr.io/org/app", NULL), REG_ERR_DENIED);
    assert_int_equal(decide(&cfg, "ghcr.io/app", NULL), REG_ERR_DENIED);
    /* the proxy caches host:port under host-port, lower case names only */
    assert_int_equal(decide(&cfg, "reg.example-5000/app", NULL), REG_ERR_DENIED);
    assert_int_equal(decide(&cfg, "reg.example:5000/app", NULL), REG_ERR_DENIED);
    /* only the host's own directory: not a longer host, not the bare name */
    assert_int_equal(decide(&cfg, "ghcr.io", NULL), REG_OK);
    assert_int_equal(decide(&cfg, "ghcr.io2/app", NULL), REG_OK);
    assert_int_equal(decide(&cfg, "ghcr.iob/app", NULL), REG_OK);
    assert_int_equal(decide(&cfg, "org/ghcr.io/app", NULL), REG_OK);
    assert_int_equal(decide(&cfg, "reg.example-50000/app", NULL), REG_OK);
    config_free(&cfg);
}

static void test_pushusers(void **state)
{
    (void)state;
    struct config cfg = load(BASE "auth:\n  htpasswd:\n    realm: r\n    path: /p\n" PROXY
                                  "  push: true\n  pushusers: [ann, Bob]\n");
    assert_int_equal(decide(&cfg, "org/app", "ann"), REG_OK);
    assert_int_equal(decide(&cfg, "org/app", "Bob"), REG_OK);
    assert_int_equal(decide(&cfg, "org/app", "bob"), REG_ERR_DENIED);
    assert_int_equal(decide(&cfg, "org/app", "an"), REG_ERR_DENIED);
    assert_int_equal(decide(&cfg, "org/app", NULL), REG_ERR_DENIED);
    config_free(&cfg);
    cfg = load(BASE "auth:\n  htpasswd:\n    realm: r\n    path: /p\n" PROXY "  push: true\n");
    assert_int_equal(decide(&cfg, "org/app", "anyone"), REG_OK);
    config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_without_proxy_everything_goes),
        cmocka_unit_test(test_proxy_is_read_only_by_default),
        cmocka_unit_test(test_remote_namespaces_are_reserved),
        cmocka_unit_test(test_pushusers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
