/* Route parsing: which /v2/ paths map to which handler, and which are rejected. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "api.h"

#define EMPTY "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static void expect_route(const char *path, enum api_route_kind kind, const char *name,
                         const char *ref)
{
    struct api_route rt;
    assert_int_equal(api_route_parse(path, &rt), REG_OK);
    assert_int_equal(rt.kind, kind);
    assert_string_equal(rt.name, name);
    assert_string_equal(rt.ref, ref);
}

static void expect_error(const char *path, enum regerr e)
{
    struct api_route rt;
    assert_int_equal(api_route_parse(path, &rt), e);
}

static void test_routes(void **state)
{
    expect_route("/v2/", API_ROUTE_BASE, "", "");
    expect_route("/v2", API_ROUTE_BASE, "", "");
    expect_route("/v2/_catalog", API_ROUTE_CATALOG, "", "");
    expect_route("/v2/library/alpine/tags/list", API_ROUTE_TAGS, "library/alpine", "");
    expect_route("/v2/a/manifests/latest", API_ROUTE_MANIFEST, "a", "latest");
    expect_route("/v2/a/b/manifests/" EMPTY, API_ROUTE_MANIFEST, "a/b", EMPTY);
    expect_route("/v2/a/blobs/" EMPTY, API_ROUTE_BLOB, "a", EMPTY);
    expect_route("/v2/a/blobs/uploads/", API_ROUTE_UPLOAD_START, "a", "");
    expect_route("/v2/a/blobs/uploads/1234-abcd", API_ROUTE_UPLOAD, "a", "1234-abcd");
    expect_route("/v2/a/referrers/" EMPTY, API_ROUTE_REFERRERS, "a", EMPTY);
    /* Names may contain the words the routes use. */
    expect_route("/v2/manifests/blobs/manifests/v1", API_ROUTE_MANIFEST, "manifests/blobs", "v1");
    expect_route("/v2/blobs/tags/list", API_ROUTE_TAGS, "blobs", "");
}

static void test_rejects(void **state)
{
    expect_error("/v3/", REG_ERR_NOT_FOUND);
    expect_error("/v2/a", REG_ERR_NOT_FOUND);
    expect_error("/v2/a/unknown/x", REG_ERR_NOT_FOUND);
    expect_error("/v2/A/manifests/v1", REG_ERR_NAME_INVALID);
    expect_error("/v2/../etc/manifests/v1", REG_ERR_NAME_INVALID);
    expect_error("/v2/a/%2e%2e/manifests/v1", REG_ERR_NAME_INVALID);
    expect_error("/v2//a/manifests/v1", REG_ERR_NAME_INVALID);
    expect_error("/v2/a/manifests/.bad", REG_ERR_MANIFEST_UNKNOWN);
    expect_error("/v2/a/manifests/.INVALID_MANIFEST_NAME", REG_ERR_MANIFEST_UNKNOWN);
    char longtag[300] = "/v2/a/manifests/";
    memset(longtag + 16, 't', 200);
    expect_error(longtag, REG_ERR_MANIFEST_UNKNOWN);
    expect_error("/v2/a/manifests/sha256:xyz", REG_ERR_DIGEST_INVALID);
    expect_error("/v2/a/blobs/latest", REG_ERR_DIGEST_INVALID);
    expect_error("/v2/a/referrers/latest", REG_ERR_DIGEST_INVALID);
    char longname[400] = "/v2/";
    memset(longname + 4, 'a', 300);
    strcpy(longname + 304, "/tags/list");
    expect_error(longname, REG_ERR_NAME_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
