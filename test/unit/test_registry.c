/* Registry logic on the filesystem driver: uploads, manifests, tags, catalog, deletes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layout.h"
#include "registry.h"

struct fixture {
    char root[64];
    struct storage *st;
    struct registry *reg;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "/tmp/regmirror-test-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    f->st = storage_fs_new(f->root);
    assert_non_null(f->st);
    struct registry_opts opts = {.delete_enabled = true};
    f->reg = registry_new(f->st, &opts);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    registry_free(f->reg);
    storage_remove(f->st, "/docker");
    storage_free(f->st);
    rmdir(f->root);
    free(f);
    return 0;
}

/* Uploads data as a blob into name in two writes; returns its digest. */
static struct digest push_blob(struct registry *reg, const char *name, const char *data)
{
    struct digest d;
    char id[37];
    assert_int_equal(digest_compute(DIGEST_SHA256, data, strlen(data), &d), 0);
    assert_int_equal(registry_upload_start(reg, name, id), REG_OK);
    struct registry_upload *up;
    size_t half = strlen(data) / 2;
    assert_int_equal(registry_upload_open(reg, name, id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, data, half), REG_OK);
    registry_upload_close(up);
    assert_int_equal(registry_upload_open(reg, name, id, &up), REG_OK);
    assert_int_equal(registry_upload_offset(up), half);
    assert_int_equal(registry_upload_write(up, data + half, strlen(data) - half), REG_OK);
    assert_int_equal(registry_upload_commit(up, &d), REG_OK);
    return d;
}

static void test_upload_and_blob(void **state)
{
    struct fixture *f = *state;
    struct digest d = push_blob(f->reg, "a/b", "hello blob");
    uint64_t size = 0;
    assert_int_equal(registry_blob_stat(f->reg, "a/b", &d, &size), REG_OK);
    assert_int_equal(size, 10);
    assert_int_equal(registry_blob_stat(f->reg, "other", &d, &size), REG_ERR_BLOB_UNKNOWN);
    assert_int_equal(registry_blob_mount(f->reg, "other", "a/b", &d), REG_OK);
    assert_int_equal(registry_blob_stat(f->reg, "other", &d, &size), REG_OK);
    assert_int_equal(registry_blob_delete(f->reg, "other", &d), REG_OK);
    assert_int_equal(registry_blob_stat(f->reg, "other", &d, &size), REG_ERR_BLOB_UNKNOWN);
    /* Data stays for the repository that still links it. */
    assert_int_equal(registry_blob_stat(f->reg, "a/b", &d, &size), REG_OK);
}

static void test_upload_digest_mismatch(void **state)
{
    struct fixture *f = *state;
    char id[37];
    struct digest wrong;
    assert_int_equal(digest_compute(DIGEST_SHA256, "x", 1, &wrong), 0);
    assert_int_equal(registry_upload_start(f->reg, "r", id), REG_OK);
    struct registry_upload *up;
    assert_int_equal(registry_upload_open(f->reg, "r", id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, "abc", 3), REG_OK);
    assert_int_equal(registry_upload_commit(up, &wrong), REG_ERR_DIGEST_INVALID);
    uint64_t size;
    assert_int_equal(registry_blob_stat(f->reg, "r", &wrong, &size), REG_ERR_BLOB_UNKNOWN);
    /* The session is still there and re-hashes from storage on the next try. */
    assert_int_equal(registry_upload_size(f->reg, "r", id, &size), REG_OK);
    assert_int_equal(size, 3);
    struct digest right;
    assert_int_equal(digest_compute(DIGEST_SHA256, "abc", 3, &right), 0);
    assert_int_equal(registry_upload_open(f->reg, "r", id, &up), REG_OK);
    assert_int_equal(registry_upload_commit(up, &right), REG_OK);
    assert_int_equal(registry_upload_size(f->reg, "r", id, &size), REG_ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(registry_upload_cancel(f->reg, "r", id), REG_ERR_BLOB_UPLOAD_UNKNOWN);
}

static void test_upload_rewind(void **state)
{
    struct fixture *f = *state;
    char id[37];
    struct registry_upload *up;
    uint64_t size;
    assert_int_equal(registry_upload_start(f->reg, "rw", id), REG_OK);
    assert_int_equal(registry_upload_open(f->reg, "rw", id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, "abc", 3), REG_OK);
    assert_int_equal(registry_upload_close(up), REG_OK);
    /* A request that wrote "defgh" and failed goes back to where it began. */
    assert_int_equal(registry_upload_open(f->reg, "rw", id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, "defgh", 5), REG_OK);
    assert_int_equal(registry_upload_rewind(up, 3), REG_OK);
    assert_int_equal(registry_upload_offset(up), 3);
    assert_int_equal(registry_upload_rewind(up, 4), REG_ERR_INTERNAL);
    assert_int_equal(registry_upload_close(up), REG_OK);
    assert_int_equal(registry_upload_size(f->reg, "rw", id, &size), REG_OK);
    assert_int_equal(size, 3);
    /* Appends go on from there, and the digest is of what the session holds. */
    assert_int_equal(registry_upload_open(f->reg, "rw", id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, "x", 1), REG_OK);
    struct digest d;
    assert_int_equal(digest_compute(DIGEST_SHA256, "abcx", 4, &d), 0);
    assert_int_equal(registry_upload_commit(up, &d), REG_OK);
    assert_int_equal(registry_blob_stat(f->reg, "rw", &d, &size), REG_OK);
    assert_int_equal(size, 4);
}

/* Writes data into an open session and closes it. */
static void append(struct registry *reg, const char *name, const char *id, const char *data)
{
    struct registry_upload *up;
    assert_int_equal(registry_upload_open(reg, name, id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, data, strlen(data)), REG_OK);
    assert_int_equal(registry_upload_close(up), REG_OK);
}

/* Opens the session, writes data (may be "") and commits against the digest of want. */
static enum regerr put_with(struct registry *reg, const char *name, const char *id,
                            const char *data, const char *want)
{
    struct registry_upload *up;
    struct digest d;
    assert_int_equal(digest_compute(DIGEST_SHA256, want, strlen(want), &d), 0);
    assert_int_equal(registry_upload_open(reg, name, id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, data, strlen(data)), REG_OK);
    return registry_upload_commit(up, &d);
}

/*
 * Two registries on one root, as the nodes of a cluster: each request of a session may reach
 * either, and a restart forgets what was hashed. The digest covers every stored byte
 * whichever node hashed which part.
 */
static void test_upload_on_any_node(void **state)
{
    struct fixture *f = *state;
    struct registry_opts opts = {.delete_enabled = true};
    struct registry *other = registry_new(f->st, &opts);
    assert_non_null(other);
    char id[37];
    uint64_t size;
    /* POST on one node, the whole blob in the PUT on the other */
    assert_int_equal(registry_upload_start(f->reg, "n", id), REG_OK);
    assert_int_equal(put_with(other, "n", id, "monolithic", "monolithic"), REG_OK);
    /* PATCH on one node, PUT with the rest on the other: a digest of the PUT's bytes alone or
     * of the stored part alone is refused, and the session stays */
    assert_int_equal(registry_upload_start(f->reg, "n", id), REG_OK);
    append(f->reg, "n", id, "stored ");
    assert_int_equal(put_with(other, "n", id, "", "stored "), REG_OK);
    assert_int_equal(registry_upload_start(f->reg, "n", id), REG_OK);
    append(f->reg, "n", id, "stored ");
    assert_int_equal(put_with(other, "n", id, "part", "part"), REG_ERR_DIGEST_INVALID);
    assert_int_equal(registry_upload_size(f->reg, "n", id, &size), REG_OK);
    assert_int_equal(size, 11);
    assert_int_equal(put_with(other, "n", id, "", "stored "), REG_ERR_DIGEST_INVALID);
    /* the node that hashed the first part has a state that missed "part": not used */
    assert_int_equal(put_with(f->reg, "n", id, "!", "stored part!"), REG_OK);
    /* chunks alternating between the nodes, the last one in the PUT */
    assert_int_equal(registry_upload_start(other, "n", id), REG_OK);
    append(f->reg, "n", id, "a");
    append(other, "n", id, "b");
    append(f->reg, "n", id, "c");
    assert_int_equal(put_with(other, "n", id, "d", "abcd"), REG_OK);
    /* a restart between the requests: the new instance has no state for the session */
    assert_int_equal(registry_upload_start(f->reg, "n", id), REG_OK);
    append(f->reg, "n", id, "before ");
    registry_free(f->reg);
    f->reg = registry_new(f->st, &opts);
    assert_non_null(f->reg);
    assert_int_equal(put_with(f->reg, "n", id, "after", "after"), REG_ERR_DIGEST_INVALID);
    assert_int_equal(put_with(f->reg, "n", id, "", "before after"), REG_OK);
    registry_free(other);
}

static void test_manifest_roundtrip(void **state)
{
    struct fixture *f = *state;
    struct digest cfg = push_blob(f->reg, "img", "{\"architecture\":\"amd64\"}");
    struct digest layer = push_blob(f->reg, "img", "layer bytes");
    char cs[DIGEST_STR_MAX], ls[DIGEST_STR_MAX], body[1024];
    snprintf(body, sizeof(body),
             "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
             "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\","
             "\"digest\":\"%s\",\"size\":25},\"layers\":[{\"mediaType\":"
             "\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"%s\",\"size\":11}]}",
             digest_str(&cfg, cs), digest_str(&layer, ls));
    struct digest md, subject;
    bool has_subject = true;
    char err[256];
    assert_int_equal(registry_manifest_put(f->reg, "img", "v1", body, strlen(body), NULL, &md,
                                           &has_subject, &subject, err, sizeof(err)),
                     REG_OK);
    assert_false(has_subject);
    struct registry_manifest m;
    assert_int_equal(registry_manifest_get(f->reg, "img", "v1", &m), REG_OK);
    assert_int_equal(m.len, strlen(body));
    assert_memory_equal(m.body, body, m.len);
    assert_string_equal(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_true(digest_equal(&m.digest, &md));
    registry_manifest_release(&m);

    struct storage_list tags = {0};
    assert_int_equal(registry_tags(f->reg, "img", &tags), REG_OK);
    assert_int_equal(tags.n, 1);
    assert_string_equal(tags.names[0], "v1");
    storage_list_free(&tags);
    assert_int_equal(registry_tags(f->reg, "nope", &tags), REG_ERR_NAME_UNKNOWN);

    struct storage_list cat = {0};
    assert_int_equal(registry_catalog(f->reg, &cat), REG_OK);
    assert_int_equal(cat.n, 1);
    assert_string_equal(cat.names[0], "img");
    storage_list_free(&cat);

    /* Deleting by digest removes the tag that points at it. */
    char ms[DIGEST_STR_MAX];
    assert_int_equal(registry_manifest_delete(f->reg, "img", digest_str(&md, ms)), REG_OK);
    assert_int_equal(registry_manifest_get(f->reg, "img", "v1", &m), REG_ERR_MANIFEST_UNKNOWN);
    assert_int_equal(registry_manifest_get(f->reg, "img", ms, &m), REG_ERR_MANIFEST_UNKNOWN);
}

static void test_manifest_missing_blob(void **state)
{
    struct fixture *f = *state;
    const char *body =
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
        "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":"
        "\"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\",\"size\":0},"
        "\"layers\":[]}";
    struct digest md, subject;
    bool has_subject;
    char err[256] = "";
    assert_int_equal(registry_manifest_put(f->reg, "img", "v1", body, strlen(body), NULL, &md,
                                           &has_subject, &subject, err, sizeof(err)),
                     REG_ERR_MANIFEST_BLOB_UNKNOWN);
    assert_non_null(strstr(err, "sha256:e3b0"));
    struct storage_list cat = {0};
    assert_int_equal(registry_catalog(f->reg, &cat), REG_OK);
    assert_int_equal(cat.n, 0);
    storage_list_free(&cat);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upload_and_blob, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_digest_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_rewind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_on_any_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_missing_blob, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
