#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "manifest.h"

#define D1 "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"
#define D2 "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"
#define D3 "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"

#define LAYER_GZ "application/vnd.oci.image.layer.v1.tar+gzip"
#define DOCKER_LAYER "application/vnd.docker.image.rootfs.diff.tar.gzip"

static const char docker_v2[] =
    "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_DOCKER_V2 "\","
    "\"config\":{\"mediaType\":\"" MANIFEST_MT_DOCKER_CONFIG "\",\"size\":7023,\"digest\":\"" D1
    "\"},"
    "\"layers\":[{\"mediaType\":\"" DOCKER_LAYER "\",\"size\":32654,\"digest\":\"" D2 "\"},"
    "{\"mediaType\":\"" DOCKER_LAYER "\",\"size\":16724,\"digest\":\"" D3 "\"}]}";

static const char oci_artifact[] =
    "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\","
    "\"artifactType\":\"application/vnd.example.sbom.v1\","
    "\"config\":{\"mediaType\":\"" MANIFEST_MT_OCI_EMPTY "\",\"size\":2,\"digest\":\"" D1
    "\",\"data\":\"e30=\"},"
    "\"layers\":[{\"mediaType\":\"application/spdx+json\",\"size\":10,\"digest\":\"" D2 "\","
    "\"annotations\":{\"org.opencontainers.image.title\":\"sbom.json\"}}],"
    "\"subject\":{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\",\"size\":1234,\"digest\":\"" D3
    "\"},"
    "\"annotations\":{\"org.opencontainers.image.created\":\"2024-01-01T00:00:00Z\",\"b\":\"2\"}}";

static const char oci_index[] =
    "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_INDEX "\",\"manifests\":["
    "{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\",\"size\":7143,\"digest\":\"" D1 "\","
    "\"platform\":{\"architecture\":\"ppc64le\",\"os\":\"linux\"}},"
    "{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\",\"size\":7682,\"digest\":\"" D2 "\","
    "\"platform\":{\"architecture\":\"arm\",\"os\":\"linux\",\"variant\":\"v7\","
    "\"os.features\":[\"x\"],\"features\":[\"sse4\"],\"os.version\":\"1\"}},"
    "{\"mediaType\":\"application/vnd.example+json\",\"size\":1,\"digest\":\"" D3 "\","
    "\"artifactType\":\"application/vnd.example.sig\"}],"
    "\"annotations\":{\"com.example.key1\":\"value1\"}}";

static const char docker_list[] =
    "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_DOCKER_LIST "\",\"manifests\":["
    "{\"mediaType\":\"" MANIFEST_MT_DOCKER_V2 "\",\"size\":528,\"digest\":\"" D1 "\","
    "\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}},"
    "{\"mediaType\":\"" MANIFEST_MT_DOCKER_V2 "\",\"size\":529,\"digest\":\"" D2 "\","
    "\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\",\"variant\":\"v8\"}}]}";

static enum regerr parse(const char *body, const char *ct, struct manifest *m, char *err,
                         size_t errlen)
{
    return manifest_parse(body, strlen(body), ct, m, err, errlen);
}

/* Expects body to be refused with code e and a message containing want. */
static void expect_error(const char *body, const char *ct, enum regerr e, const char *want)
{
    struct manifest m;
    char err[256];
    enum regerr got = parse(body, ct, &m, err, sizeof(err));

    if (got != e)
        fail_msg("got %s (%s), want %s for %s", regerr_code(got), err, regerr_code(e), body);
    if (strstr(err, want) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err, want);
    assert_null(m.media_type);
    assert_null(m.layers);
    assert_int_equal(m.nlayers, 0);
    manifest_free(&m);
}

static void test_docker_v2(void **state)
{
    struct manifest m;
    char err[256];
    char buf[DIGEST_STR_MAX];

    assert_int_equal(parse(docker_v2, MANIFEST_MT_DOCKER_V2, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_DOCKER_V2);
    assert_string_equal(m.media_type, MANIFEST_MT_DOCKER_V2);
    assert_true(m.has_config);
    assert_string_equal(m.config.media_type, MANIFEST_MT_DOCKER_CONFIG);
    assert_int_equal(m.config.size, 7023);
    assert_string_equal(digest_str(&m.config.digest, buf), D1);
    assert_int_equal(m.nlayers, 2);
    assert_string_equal(m.layers[1].media_type, DOCKER_LAYER);
    assert_int_equal(m.layers[1].size, 16724);
    assert_string_equal(digest_str(&m.layers[1].digest, buf), D3);
    assert_false(m.has_subject);
    assert_null(m.artifact_type);
    assert_null(m.annotations_json);
    assert_null(m.layers[0].urls);
    assert_int_equal(m.layers[0].nurls, 0);
    manifest_free(&m);
    assert_null(m.layers);

    /* urls are kept, in order */
    static const char foreign[] =
        "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_DOCKER_V2 "\","
        "\"config\":{\"mediaType\":\"" MANIFEST_MT_DOCKER_CONFIG "\",\"size\":7023,\"digest\":\"" D1
        "\"},\"layers\":[{\"mediaType\":\"application/"
        "vnd.docker.image.rootfs.foreign.diff.tar.gzip\","
        "\"size\":5,\"digest\":\"" D2
        "\",\"urls\":[\"https://a.example/1\",\"http://b.example/2\"]}]}";
    assert_int_equal(parse(foreign, NULL, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.layers[0].nurls, 2);
    assert_string_equal(m.layers[0].urls[0], "https://a.example/1");
    assert_string_equal(m.layers[0].urls[1], "http://b.example/2");
    manifest_free(&m);

    /* Kind from the mediaType property when no Content-Type. */
    assert_int_equal(parse(docker_v2, NULL, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_DOCKER_V2);
    manifest_free(&m);
    /* Unknown or generic Content-Types defer to the property. */
    assert_int_equal(parse(docker_v2, "application/json", &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_DOCKER_V2);
    manifest_free(&m);
    /* Parameters, case and spaces in the header. */
    assert_int_equal(parse(docker_v2, " Application/VND.docker.distribution.manifest.v2+json ; x=y",
                           &m, NULL, 0),
                     REG_OK);
    manifest_free(&m);
}

static void test_oci_artifact(void **state)
{
    struct manifest m;
    char err[256];
    char buf[DIGEST_STR_MAX];

    assert_int_equal(parse(oci_artifact, MANIFEST_MT_OCI_MANIFEST, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_OCI);
    assert_true(m.has_subject);
    assert_string_equal(m.subject.media_type, MANIFEST_MT_OCI_MANIFEST);
    assert_int_equal(m.subject.size, 1234);
    assert_string_equal(digest_str(&m.subject.digest, buf), D3);
    assert_string_equal(m.artifact_type, "application/vnd.example.sbom.v1");
    assert_string_equal(
        m.annotations_json,
        "{\"org.opencontainers.image.created\":\"2024-01-01T00:00:00Z\",\"b\":\"2\"}");
    assert_string_equal(m.layers[0].annotations_json,
                        "{\"org.opencontainers.image.title\":\"sbom.json\"}");
    assert_string_equal(m.config.media_type, MANIFEST_MT_OCI_EMPTY);
    manifest_free(&m);
}

static void test_oci_shape_and_artifact_type(void **state)
{
    struct manifest m;
    char err[256];
    static const char plain[] =
        "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/vnd.example.config+json\","
        "\"size\":3,\"digest\":\"" D1 "\"},\"layers\":[]}";
    static const char layers_only[] =
        "{\"schemaVersion\":2,\"layers\":[],\"config\":{\"mediaType\":\"" MANIFEST_MT_OCI_CONFIG
        "\",\"size\":3,\"digest\":\"" D1 "\"}}";
    static const char index_shape[] = "{\"schemaVersion\":2,\"manifests\":[]}";

    /* No Content-Type, no mediaType: the shape decides. */
    assert_int_equal(parse(plain, NULL, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_OCI);
    assert_string_equal(m.media_type, MANIFEST_MT_OCI_MANIFEST);
    /* The referrers rule: artifactType falls back to config.mediaType. */
    assert_string_equal(m.artifact_type, "application/vnd.example.config+json");
    assert_int_equal(m.nlayers, 0);
    manifest_free(&m);

    assert_int_equal(parse(layers_only, "", &m, err, sizeof(err)), REG_OK);
    assert_string_equal(m.artifact_type, MANIFEST_MT_OCI_CONFIG);
    manifest_free(&m);

    assert_int_equal(parse(index_shape, NULL, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_OCI_INDEX);
    assert_int_equal(m.nlayers, 0);
    assert_null(m.artifact_type);
    manifest_free(&m);

    /* An OCI Content-Type with no mediaType property is fine (it is optional in OCI). */
    assert_int_equal(parse(plain, MANIFEST_MT_OCI_MANIFEST, &m, err, sizeof(err)), REG_OK);
    manifest_free(&m);
}

static void test_oci_index(void **state)
{
    struct manifest m;
    char err[256];

    assert_int_equal(parse(oci_index, MANIFEST_MT_OCI_INDEX, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_OCI_INDEX);
    assert_false(m.has_config);
    assert_int_equal(m.nlayers, 3);
    assert_string_equal(m.layers[0].arch, "ppc64le");
    assert_string_equal(m.layers[0].os, "linux");
    assert_null(m.layers[0].variant);
    assert_string_equal(m.layers[1].arch, "arm");
    assert_string_equal(m.layers[1].variant, "v7");
    assert_null(m.layers[2].os);
    assert_string_equal(m.layers[2].artifact_type, "application/vnd.example.sig");
    assert_null(m.artifact_type);
    assert_string_equal(m.annotations_json, "{\"com.example.key1\":\"value1\"}");
    manifest_free(&m);
}

static void test_docker_list(void **state)
{
    struct manifest m;
    char err[256];

    assert_int_equal(parse(docker_list, MANIFEST_MT_DOCKER_LIST, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.kind, MANIFEST_DOCKER_LIST);
    assert_string_equal(m.media_type, MANIFEST_MT_DOCKER_LIST);
    assert_int_equal(m.nlayers, 2);
    assert_string_equal(m.layers[0].arch, "amd64");
    assert_string_equal(m.layers[1].variant, "v8");
    assert_null(m.artifact_type);
    manifest_free(&m);
}

static void test_invalid_json(void **state)
{
    struct manifest m;
    char *deep;
    size_t i, n = 100000;

    expect_error("", NULL, REG_ERR_MANIFEST_INVALID, "invalid JSON");
    expect_error("not json", NULL, REG_ERR_MANIFEST_INVALID, "invalid JSON");
    expect_error("[1,2]", NULL, REG_ERR_MANIFEST_INVALID, "not a JSON object");
    expect_error("\"x\"", NULL, REG_ERR_MANIFEST_INVALID, "invalid JSON");
    expect_error("{\"schemaVersion\":2} x", NULL, REG_ERR_MANIFEST_INVALID, "invalid JSON");
    expect_error("{\"schemaVersion\":2,\"schemaVersion\":2}", NULL, REG_ERR_MANIFEST_INVALID,
                 "duplicate");
    expect_error("{\"schemaVersion\":2,\"a\":\"\xff\"}", NULL, REG_ERR_MANIFEST_INVALID,
                 "invalid JSON");
    expect_error("{\"schemaVersion\":2,\"a\":\"\\u0000\"}", NULL, REG_ERR_MANIFEST_INVALID,
                 "invalid JSON");
    assert_int_equal(manifest_parse(NULL, 0, NULL, &m, NULL, 0), REG_ERR_MANIFEST_INVALID);

    /* Body not NUL-terminated: only len bytes are read. */
    assert_int_equal(manifest_parse(docker_v2, sizeof(docker_v2) - 2, NULL, &m, NULL, 0),
                     REG_ERR_MANIFEST_INVALID);

    /* Nesting far beyond jansson's depth limit. */
    deep = malloc(2 * n + 64);
    assert_non_null(deep);
    i = (size_t)sprintf(deep, "{\"schemaVersion\":2,\"x\":");
    memset(deep + i, '[', n);
    memset(deep + i + n, ']', n);
    strcpy(deep + i + 2 * n, "}");
    expect_error(deep, NULL, REG_ERR_MANIFEST_INVALID, "invalid JSON");
    free(deep);
}

static void test_schema_version(void **state)
{
    expect_error("{\"schemaVersion\":1,\"name\":\"x\",\"tag\":\"y\",\"fsLayers\":[]}", NULL,
                 REG_ERR_UNSUPPORTED, "schema1");
    expect_error("{\"schemaVersion\":2}", MANIFEST_MT_DOCKER_V1_SIGNED, REG_ERR_UNSUPPORTED,
                 "schema1");
    expect_error("{}", MANIFEST_MT_DOCKER_V1, REG_ERR_UNSUPPORTED, "schema1");
    expect_error("{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_DOCKER_V1 "\"}", NULL,
                 REG_ERR_UNSUPPORTED, "schema1");
    expect_error("{\"mediaType\":\"" MANIFEST_MT_OCI_INDEX "\",\"manifests\":[]}", NULL,
                 REG_ERR_MANIFEST_INVALID, "schemaVersion");
    expect_error("{\"schemaVersion\":\"2\",\"manifests\":[]}", NULL, REG_ERR_MANIFEST_INVALID,
                 "schemaVersion");
    expect_error("{\"schemaVersion\":2.0,\"manifests\":[]}", NULL, REG_ERR_MANIFEST_INVALID,
                 "schemaVersion");
    expect_error("{\"schemaVersion\":3,\"manifests\":[]}", NULL, REG_ERR_MANIFEST_INVALID,
                 "schemaVersion");
}

static void test_media_type_rules(void **state)
{
    /* Content-Type and mediaType disagree. */
    expect_error(docker_v2, MANIFEST_MT_OCI_MANIFEST, REG_ERR_MANIFEST_INVALID,
                 "does not match the Content-Type");
    expect_error(oci_index, MANIFEST_MT_DOCKER_LIST, REG_ERR_MANIFEST_INVALID,
                 "does not match the Content-Type");
    /* Docker types need the property. */
    expect_error(
        "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"a/b\",\"size\":1,\"digest\":\"" D1 "\"}}",
        MANIFEST_MT_DOCKER_V2, REG_ERR_MANIFEST_INVALID, "mediaType: missing");
    expect_error("{\"schemaVersion\":2,\"manifests\":[]}", MANIFEST_MT_DOCKER_LIST,
                 REG_ERR_MANIFEST_INVALID, "mediaType: missing");
    /* Unknown or oddly written mediaType property. */
    expect_error(
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.artifact.manifest.v1+json\"}",
        NULL, REG_ERR_MANIFEST_INVALID, "unsupported manifest type");
    expect_error("{\"schemaVersion\":2,\"mediaType\":\"APPLICATION/vnd.oci.image.index.v1+json\","
                 "\"manifests\":[]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "unsupported manifest type");
    expect_error("{\"schemaVersion\":2,\"mediaType\":7}", NULL, REG_ERR_MANIFEST_INVALID,
                 "mediaType: must be a string");
    expect_error("{\"schemaVersion\":2}", NULL, REG_ERR_MANIFEST_INVALID, "neither");
    /* Shapes that mix an image and an index. */
    expect_error("{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\",\"config\":"
                 "{\"mediaType\":\"a/b\",\"size\":1,\"digest\":\"" D1 "\"},\"manifests\":[]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "manifests: not allowed");
    expect_error("{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_INDEX "\","
                 "\"manifests\":[],\"layers\":[]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "not allowed in an index");
    expect_error("{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_INDEX "\"}", NULL,
                 REG_ERR_MANIFEST_INVALID, "manifests: missing");
    expect_error("{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_INDEX
                 "\",\"manifests\":{}}",
                 NULL, REG_ERR_MANIFEST_INVALID, "manifests: must be an array");
}

#define OCI_HEAD "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\","
#define GOOD_CONFIG                                                                                \
    "\"config\":{\"mediaType\":\"" MANIFEST_MT_OCI_CONFIG "\",\"size\":1,\"digest\":\"" D1 "\"}"
#define LAYER(x) "{\"mediaType\":\"" LAYER_GZ "\",\"size\":1,\"digest\":\"" D2 "\"" x "}"

static void test_descriptor_errors(void **state)
{
    expect_error(OCI_HEAD "\"layers\":[]}", NULL, REG_ERR_MANIFEST_INVALID, "config: missing");
    expect_error(OCI_HEAD "\"config\":[]}", NULL, REG_ERR_MANIFEST_INVALID,
                 "config: must be an object");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":{}}", NULL, REG_ERR_MANIFEST_INVALID,
                 "layers: must be an array");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[" LAYER("") "," LAYER(
                     "") ","
                         "{\"mediaType\":\"" LAYER_GZ "\",\"size\":1,\"digest\":\"sha256:xyz\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[2].digest: invalid digest \"sha256:xyz\"");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"size\":1,\"digest\":\"sha224:abc\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].digest: unsupported digest algorithm");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"size\":1,\"digest\":\"sha256:\\\"\\n\\u00e9\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "invalid digest \"sha256:????\"");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ "\",\"size\":1}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].digest: missing");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"size\":1,\"digest\":5}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].digest: must be a string");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"size\":-1,\"digest\":\"" D2 "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].size: must be an integer >= 0");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"size\":1.5,\"digest\":\"" D2 "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].size");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"size\":\"1\",\"digest\":\"" D2 "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].size");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"digest\":\"" D2 "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].size: missing");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"" LAYER_GZ
                                      "\",\"size\":99999999999999999999999,\"digest\":\"" D2
                                      "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "invalid JSON");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"size\":1,\"digest\":\"" D2 "\"}]}", NULL,
                 REG_ERR_MANIFEST_INVALID, "layers[0].mediaType: missing");
    expect_error(OCI_HEAD GOOD_CONFIG
                 ",\"layers\":[{\"mediaType\":\"tar\",\"size\":1,\"digest\":\"" D2 "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].mediaType: invalid media type \"tar\"");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[{\"mediaType\":\"\",\"size\":1,\"digest\":\"" D2
                                      "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].mediaType: invalid media type");
    expect_error(OCI_HEAD GOOD_CONFIG
                 ",\"layers\":[{\"mediaType\":\"a/b c\",\"size\":1,\"digest\":\"" D2 "\"}]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "invalid media type");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[" LAYER(",\"urls\":\"http://x\"") "]}", NULL,
                 REG_ERR_MANIFEST_INVALID, "layers[0].urls: must be an array");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[" LAYER(",\"urls\":[1]") "]}", NULL,
                 REG_ERR_MANIFEST_INVALID, "layers[0].urls[0]: must be a string");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[" LAYER(",\"annotations\":{\"a\":1}") "]}",
                 NULL, REG_ERR_MANIFEST_INVALID, "layers[0].annotations[\"a\"]");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"annotations\":[]}", NULL, REG_ERR_MANIFEST_INVALID,
                 "annotations: must be an object");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"artifactType\":\"nope\"}", NULL, REG_ERR_MANIFEST_INVALID,
                 "artifactType: invalid media type");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"subject\":{\"mediaType\":\"a/b\",\"size\":1}}", NULL,
                 REG_ERR_MANIFEST_INVALID, "subject.digest: missing");
    expect_error(OCI_HEAD GOOD_CONFIG ",\"layers\":[" LAYER(",\"data\":1") "]}", NULL,
                 REG_ERR_MANIFEST_INVALID, "layers[0].data");
}

static void test_platform_errors(void **state)
{
#define IDX(p)                                                                                     \
    "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST               \
    "\",\"size\":1,\"digest\":\"" D1 "\",\"platform\":" p "}]}"
    expect_error(IDX("{\"architecture\":\"amd64\"}"), NULL, REG_ERR_MANIFEST_INVALID,
                 "manifests[0].platform: needs");
    expect_error(IDX("\"linux\""), NULL, REG_ERR_MANIFEST_INVALID,
                 "manifests[0].platform: must be an object");
    expect_error(IDX("{\"architecture\":1,\"os\":\"linux\"}"), NULL, REG_ERR_MANIFEST_INVALID,
                 "manifests[0].platform.architecture: must be a string");
    expect_error(IDX("{\"architecture\":\"a\",\"os\":\"linux\",\"variant\":[]}"), NULL,
                 REG_ERR_MANIFEST_INVALID, "platform.variant");
    expect_error(IDX("{\"architecture\":\"a\",\"os\":\"linux\",\"features\":[2]}"), NULL,
                 REG_ERR_MANIFEST_INVALID, "platform.features[0]");
    expect_error(IDX("{\"architecture\":\"a\",\"os\":\"linux\",\"os.version\":2}"), NULL,
                 REG_ERR_MANIFEST_INVALID, "platform.os.version");
#undef IDX
}

static void test_limits(void **state)
{
    static const char entry[] = "{\"mediaType\":\"" LAYER_GZ "\",\"size\":1,\"digest\":\"" D2 "\"}";
    size_t n, cap = (MANIFEST_MAX_DESCRIPTORS + 1) * (sizeof(entry) + 1) + 512;
    char *body = malloc(cap);
    char *p;
    struct manifest m;
    char err[256];
    char longtype[400];

    assert_non_null(body);
    p = body + sprintf(body, OCI_HEAD GOOD_CONFIG ",\"layers\":[");
    for (n = 0; n < MANIFEST_MAX_DESCRIPTORS; n++)
        p += sprintf(p, "%s%s", n ? "," : "", entry);
    strcpy(p, "]}");
    assert_int_equal(parse(body, NULL, &m, err, sizeof(err)), REG_OK);
    assert_int_equal(m.nlayers, MANIFEST_MAX_DESCRIPTORS);
    manifest_free(&m);

    p += sprintf(p, ",%s", entry);
    strcpy(p, "]}");
    expect_error(body, NULL, REG_ERR_MANIFEST_INVALID, "layers: more than 10000 entries");
    free(body);

    /* A media type of 300 bytes is refused, one within RFC 6838's limits is not. */
    n = (size_t)sprintf(longtype, "{\"schemaVersion\":2,\"artifactType\":\"a/");
    memset(longtype + n, 'a', 126);
    strcpy(longtype + n + 126, "\",\"manifests\":[]}");
    assert_int_equal(parse(longtype, NULL, &m, err, sizeof(err)), REG_OK);
    manifest_free(&m);
    memset(longtype + n, 'a', 300);
    strcpy(longtype + n + 300, "\",\"manifests\":[]}");
    expect_error(longtype, NULL, REG_ERR_MANIFEST_INVALID, "artifactType: invalid media type");
}

static void test_error_buffer(void **state)
{
    struct manifest m;
    char err[8];

    /* Small and absent buffers are fine. */
    assert_int_equal(parse("[]", NULL, &m, err, sizeof(err)), REG_ERR_MANIFEST_INVALID);
    assert_int_equal(strlen(err), sizeof(err) - 1);
    assert_int_equal(parse("[]", NULL, &m, NULL, 0), REG_ERR_MANIFEST_INVALID);
    assert_int_equal(parse("[]", NULL, &m, err, 0), REG_ERR_MANIFEST_INVALID);
    manifest_free(&m);
    manifest_free(NULL);

    /* A failure late in the parse leaves nothing behind. */
    assert_int_equal(
        parse(OCI_HEAD GOOD_CONFIG ",\"layers\":[" LAYER(
                  ",\"annotations\":{}") ","
                                         "{\"mediaType\":\"x\",\"size\":1,\"digest\":\"" D2 "\"}]}",
              NULL, &m, NULL, 0),
        REG_ERR_MANIFEST_INVALID);
    assert_null(m.layers);
    assert_null(m.config.media_type);
}

static void test_kind_media_type(void **state)
{
    assert_string_equal(manifest_kind_media_type(MANIFEST_OCI), MANIFEST_MT_OCI_MANIFEST);
    assert_string_equal(manifest_kind_media_type(MANIFEST_OCI_INDEX), MANIFEST_MT_OCI_INDEX);
    assert_string_equal(manifest_kind_media_type(MANIFEST_DOCKER_V2), MANIFEST_MT_DOCKER_V2);
    assert_string_equal(manifest_kind_media_type(MANIFEST_DOCKER_LIST), MANIFEST_MT_DOCKER_LIST);
    assert_string_equal(manifest_kind_media_type((enum manifest_kind)9), "");
}

static bool accepts1(const char *accept, const char *mt)
{
    return manifest_accepts(&accept, 1, mt);
}

static void test_accepts(void **state)
{
    const char *docker_client[] = {
        MANIFEST_MT_DOCKER_V2,
        MANIFEST_MT_DOCKER_LIST,
        MANIFEST_MT_OCI_INDEX ", " MANIFEST_MT_OCI_MANIFEST,
    };
    const char *blank[] = {"", " , "};

    /* No Accept at all, or nothing usable in it, accepts everything. */
    assert_true(manifest_accepts(NULL, 0, MANIFEST_MT_OCI_MANIFEST));
    assert_true(manifest_accepts(blank, 2, MANIFEST_MT_OCI_MANIFEST));
    assert_true(accepts1("garbage", MANIFEST_MT_OCI_INDEX));
    assert_false(manifest_accepts(NULL, 0, NULL));

    /* Several lines, some comma-joined. */
    assert_true(manifest_accepts(docker_client, 3, MANIFEST_MT_OCI_MANIFEST));
    assert_true(manifest_accepts(docker_client, 3, MANIFEST_MT_DOCKER_LIST));
    assert_false(manifest_accepts(docker_client, 2, MANIFEST_MT_OCI_MANIFEST));
    assert_false(manifest_accepts(docker_client, 3, MANIFEST_MT_DOCKER_V1_SIGNED));

    /* Parameters, q values, case. */
    assert_true(accepts1(MANIFEST_MT_DOCKER_V2 ";q=0.5", MANIFEST_MT_DOCKER_V2));
    assert_true(accepts1(" application/VND.docker.distribution.manifest.v2+JSON ; q=1.0 ",
                         MANIFEST_MT_DOCKER_V2));
    assert_false(accepts1(MANIFEST_MT_DOCKER_V2 ";q=0", MANIFEST_MT_DOCKER_V2));
    assert_false(accepts1(MANIFEST_MT_DOCKER_V2 "; Q=0.000", MANIFEST_MT_DOCKER_V2));
    assert_true(accepts1(MANIFEST_MT_DOCKER_V2 ";q=0.001", MANIFEST_MT_DOCKER_V2));
    assert_true(accepts1(MANIFEST_MT_DOCKER_V2 ";charset=\"a,b\";q=0.2", MANIFEST_MT_DOCKER_V2));
    /* Malformed q: the element is skipped, and with nothing else usable everything goes. */
    assert_false(accepts1(MANIFEST_MT_DOCKER_V2 ";q=2, foo/bar", MANIFEST_MT_DOCKER_V2));
    assert_false(accepts1(MANIFEST_MT_DOCKER_V2 ";q=abc, foo/bar", MANIFEST_MT_DOCKER_V2));
    assert_true(accepts1(MANIFEST_MT_DOCKER_V2 ";q=abc", MANIFEST_MT_DOCKER_V1));

    /* Wildcards and specificity. */
    assert_true(accepts1("*/*", MANIFEST_MT_OCI_INDEX));
    assert_true(accepts1("application/*", MANIFEST_MT_OCI_INDEX));
    assert_false(accepts1("text/*", MANIFEST_MT_OCI_INDEX));
    assert_true(accepts1("text/html, */*;q=0.8", MANIFEST_MT_OCI_INDEX));
    assert_false(accepts1("*/*, " MANIFEST_MT_OCI_INDEX ";q=0", MANIFEST_MT_OCI_INDEX));
    assert_true(accepts1("*/*, " MANIFEST_MT_OCI_INDEX ";q=0", MANIFEST_MT_OCI_MANIFEST));
    assert_false(accepts1("application/*;q=0, */*", MANIFEST_MT_OCI_INDEX));
    assert_true(accepts1("application/*;q=0, " MANIFEST_MT_OCI_INDEX, MANIFEST_MT_OCI_INDEX));
    /* "*" as a type needs "*" as the subtype; alone, the malformed range counts as absent. */
    assert_true(accepts1("*/json", MANIFEST_MT_OCI_INDEX));
    assert_false(accepts1("*/json, foo/bar", MANIFEST_MT_OCI_INDEX));
    /* Prefixes are not matches. */
    assert_false(accepts1("application/vnd.oci.image.index", MANIFEST_MT_OCI_INDEX));
    assert_false(accepts1(MANIFEST_MT_OCI_INDEX "x", MANIFEST_MT_OCI_INDEX));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_docker_v2),
        cmocka_unit_test(test_oci_artifact),
        cmocka_unit_test(test_oci_shape_and_artifact_type),
        cmocka_unit_test(test_oci_index),
        cmocka_unit_test(test_docker_list),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_schema_version),
        cmocka_unit_test(test_media_type_rules),
        cmocka_unit_test(test_descriptor_errors),
        cmocka_unit_test(test_platform_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_error_buffer),
        cmocka_unit_test(test_kind_media_type),
        cmocka_unit_test(test_accepts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
