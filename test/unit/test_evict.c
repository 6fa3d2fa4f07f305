/* The eviction's decision (evict_plan_make) on the filesystem driver: what goes under
 * proxy.ttl and proxy.maxsize, in which order, and what stays because local content or a kept
 * image still reaches it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "evict.h"
#include "layout.h"
#include "manifest.h"
#include "registry.h"

#define NOW ((time_t)1700000000)
#define HOUR_MS (3600 * 1000LL)

struct fixture {
    char root[64];
    struct storage *st;
    struct registry *reg;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "/tmp/regmirror-evict-XXXXXX");
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

/* Sets the mtime of a stored path: a pull record's is the time of the last pull. */
static void set_mtime(struct fixture *f, const char *path, time_t t)
{
    char full[LAYOUT_PATH_MAX + 64];
    snprintf(full, sizeof(full), "%s%s", f->root, path);
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, full, ts, 0), 0);
}

/* A pull record of d in name, pulled at t. */
static void pulled(struct fixture *f, const char *name, const struct digest *d, time_t t)
{
    char path[LAYOUT_PATH_MAX];
    assert_int_equal(registry_proxy_pulled(f->reg, name, d, true), REG_OK);
    set_mtime(f, layout_proxy_pulled(path, name, d), t);
}

/* A blob of size bytes whose content seed makes unique, linked into name. */
static struct digest blob(struct fixture *f, const char *name, const char *seed, size_t size)
{
    char data[4096];
    assert_true(size < sizeof(data) && size > strlen(seed));
    memset(data, 'x', size);
    memcpy(data, seed, strlen(seed));
    struct digest d;
    char id[37];
    struct registry_upload *up;
    assert_int_equal(digest_compute(DIGEST_SHA256, data, size, &d), 0);
    assert_int_equal(registry_upload_start(f->reg, name, id), REG_OK);
    assert_int_equal(registry_upload_open(f->reg, name, id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, data, size), REG_OK);
    assert_int_equal(registry_upload_commit(up, &d), REG_OK);
    return d;
}

/* Stores a manifest body under tag (or by digest) as the proxy does; its digest. */
static struct digest store_manifest(struct fixture *f, const char *name, const char *tag,
                                    const char *body)
{
    struct digest md;
    digest_compute(DIGEST_SHA256, body, strlen(body), &md);
    assert_int_equal(registry_manifest_store(f->reg, name, tag, body, strlen(body), &md), REG_OK);
    return md;
}

/* An image of a config and one layer of size bytes each (blobs[0], blobs[1]), their contents
 * made unique by seed (the layer's by layer_seed when not NULL). pulled_at 0:
 * pushed (local), else proxied: pull records on the manifest and both blob links, and the
 * tag marked as proxied. */
static struct digest image_of(struct fixture *f, const char *name, const char *tag,
                              const char *seed, const char *layer_seed, size_t size,
                              time_t pulled_at, struct digest blobs[2])
{
    char cseed[64], lseed[64], body[1024], cs[DIGEST_STR_MAX], ls[DIGEST_STR_MAX];
    snprintf(cseed, sizeof(cseed), "config %s", seed);
    snprintf(lseed, sizeof(lseed), "layer %s", layer_seed ? layer_seed : seed);
    blobs[0] = blob(f, name, cseed, size);
    blobs[1] = blob(f, name, lseed, size);
    snprintf(body, sizeof(body),
             "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\","
             "\"config\":{\"mediaType\":\"" MANIFEST_MT_OCI_CONFIG
             "\",\"digest\":\"%s\",\"size\":%zu},\"layers\":[{\"mediaType\":"
             "\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"%s\",\"size\":%zu}]}",
             digest_str(&blobs[0], cs), size, digest_str(&blobs[1], ls), size);
    struct digest md = store_manifest(f, name, tag, body);
    if (pulled_at) {
        pulled(f, name, &md, pulled_at);
        pulled(f, name, &blobs[0], pulled_at);
        pulled(f, name, &blobs[1], pulled_at);
        if (tag)
            assert_int_equal(registry_proxy_tag_touch(f->reg, name, tag), REG_OK);
    }
    return md;
}

static struct digest image(struct fixture *f, const char *name, const char *tag, const char *seed,
                           size_t size, time_t pulled_at, struct digest blobs[2])
{
    return image_of(f, name, tag, seed, NULL, size, pulled_at, blobs);
}

static bool has_blob(const struct evict_plan *p, const struct digest *d)
{
    for (size_t i = 0; i < evict_plan_blobs(p); i++) {
        if (digest_equal(evict_plan_blob(p, i), d))
            return true;
    }
    return false;
}

static void assert_item(const struct evict_plan *p, size_t k, const char *repo,
                        const struct digest *d, bool manifest)
{
    struct evict_item it = evict_plan_item(p, k);
    assert_string_equal(it.repo, repo);
    assert_true(digest_equal(&it.d, d));
    assert_int_equal(it.manifest, manifest);
}

static void test_ttl_takes_only_what_was_not_pulled(void **state)
{
    struct fixture *f = *state;
    struct digest old_b[2], new_b[2], local_b[2];
    struct digest old = image(f, "lib/a", "old", "a-old", 100, NOW - 7200, old_b);
    image(f, "lib/a", "new", "a-new", 100, NOW - 60, new_b);
    /* Pushed long ago: local content never goes. */
    image(f, "mine", "v1", "mine", 100, 0, local_b);
    struct evict_plan *p = evict_plan_make(f->st, HOUR_MS, 0, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 1);
    assert_item(p, 0, "lib/a", &old, true);
    assert_int_equal(evict_plan_blobs(p), 3); /* the manifest, its config and its layer */
    assert_true(has_blob(p, &old));
    assert_true(has_blob(p, &old_b[0]) && has_blob(p, &old_b[1]));
    assert_false(has_blob(p, &new_b[1]) || has_blob(p, &local_b[1]));
    evict_plan_free(p);
    /* No limits: nothing goes. */
    p = evict_plan_make(f->st, 0, 0, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 0);
    assert_int_equal(evict_plan_blobs(p), 0);
    evict_plan_free(p);
}

static void test_maxsize_takes_the_least_recently_pulled_first(void **state)
{
    struct fixture *f = *state;
    struct digest b1[2], b2[2], b3[2];
    /* Pulled in the order 2, 1, 3: image 2 is the least recent, then 1. */
    struct digest i1 = image(f, "one", "t", "one", 1000, NOW - 200, b1);
    struct digest i2 = image(f, "two", "t", "two", 1000, NOW - 300, b2);
    struct digest i3 = image(f, "three", "t", "three", 1000, NOW - 100, b3);
    struct evict_plan *p = evict_plan_make(f->st, 0, 3000, NOW);
    assert_non_null(p);
    uint64_t before = evict_plan_bytes_before(p);
    assert_true(before > 6000 && before < 8000); /* six 1000-byte blobs and three manifests */
    assert_int_equal(evict_plan_items(p), 2);
    assert_item(p, 0, "two", &i2, true);
    assert_item(p, 1, "one", &i1, true);
    assert_true(evict_plan_bytes_left(p) <= 3000);
    assert_false(has_blob(p, &i3) || has_blob(p, &b3[0]) || has_blob(p, &b3[1]));
    assert_true(has_blob(p, &b2[1]) && has_blob(p, &b1[1]));
    evict_plan_free(p);
    /* A bound that holds everything takes nothing. */
    p = evict_plan_make(f->st, 0, before, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 0);
    evict_plan_free(p);
}

static void test_blob_reached_by_local_content_stays(void **state)
{
    struct fixture *f = *state;
    struct digest pb[2], lb[2];
    struct digest proxied = image_of(f, "cache/x", "t", "x", "shared", 100, NOW - 7200, pb);
    /* A pushed image in another repository with the same layer (the same content). */
    image_of(f, "pushed/y", "t", "y", "shared", 100, 0, lb);
    assert_true(digest_equal(&pb[1], &lb[1]));
    struct evict_plan *p = evict_plan_make(f->st, HOUR_MS, 0, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 1);
    assert_item(p, 0, "cache/x", &proxied, true);
    /* Its own data goes, the shared layer's does not. */
    assert_int_equal(evict_plan_blobs(p), 2);
    assert_true(has_blob(p, &proxied) && has_blob(p, &pb[0]));
    assert_false(has_blob(p, &pb[1]));
    evict_plan_free(p);
}

static void test_local_tag_makes_a_pulled_revision_local(void **state)
{
    struct fixture *f = *state;
    struct digest b[2];
    struct digest md = image(f, "r", "proxied", "r", 100, NOW - 7200, b);
    /* Someone pushed a tag of their own pointing at the same revision. */
    char body[1024];
    size_t len = 0;
    char *got = NULL;
    char path[LAYOUT_PATH_MAX];
    assert_int_equal(
        storage_get_content(f->st, layout_blob_data(path, &md), sizeof(body), &got, &len), REG_OK);
    store_manifest(f, "r", "mine", got);
    free(got);
    struct evict_plan *p = evict_plan_make(f->st, HOUR_MS, 0, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 0);
    assert_int_equal(evict_plan_blobs(p), 0);
    evict_plan_free(p);
}

static void test_index_goes_before_its_children(void **state)
{
    struct fixture *f = *state;
    struct digest b1[2], b2[2];
    /* Children pulled before their index, all beyond proxy.ttl. */
    struct digest k1 = image(f, "multi", NULL, "amd64", 100, NOW - 9000, b1);
    struct digest k2 = image(f, "multi", NULL, "arm64", 100, NOW - 8000, b2);
    char body[1024], s1[DIGEST_STR_MAX], s2[DIGEST_STR_MAX];
    snprintf(body, sizeof(body),
             "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_INDEX "\",\"manifests\":["
             "{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\",\"digest\":\"%s\",\"size\":1},"
             "{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\",\"digest\":\"%s\",\"size\":1}]}",
             digest_str(&k1, s1), digest_str(&k2, s2));
    struct digest idx = store_manifest(f, "multi", "latest", body);
    pulled(f, "multi", &idx, NOW - 7200);
    assert_int_equal(registry_proxy_tag_touch(f->reg, "multi", "latest"), REG_OK);
    struct evict_plan *p = evict_plan_make(f->st, HOUR_MS, 0, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 3);
    assert_item(p, 0, "multi", &idx, true);
    assert_item(p, 1, "multi", &k1, true);
    assert_item(p, 2, "multi", &k2, true);
    evict_plan_free(p);
    /* Only the children expired: the index pulled recently keeps them. */
    pulled(f, "multi", &idx, NOW - 60);
    p = evict_plan_make(f->st, HOUR_MS, 0, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 0);
    evict_plan_free(p);
}

static void test_lone_proxied_blob_link_is_an_item(void **state)
{
    struct fixture *f = *state;
    struct digest lone = blob(f, "blobs", "fetched by digest", 500);
    pulled(f, "blobs", &lone, NOW - 7200);
    struct digest pushed = blob(f, "blobs", "pushed by a client", 500);
    struct evict_plan *p = evict_plan_make(f->st, HOUR_MS, 0, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 1);
    assert_item(p, 0, "blobs", &lone, false);
    assert_int_equal(evict_plan_blobs(p), 1);
    assert_true(has_blob(p, &lone));
    assert_false(has_blob(p, &pushed));
    assert_int_equal(evict_plan_bytes_before(p), 500);
    assert_int_equal(evict_plan_bytes_left(p), 0);
    evict_plan_free(p);
}

static void test_empty_store(void **state)
{
    struct fixture *f = *state;
    struct evict_plan *p = evict_plan_make(f->st, HOUR_MS, 1, NOW);
    assert_non_null(p);
    assert_int_equal(evict_plan_items(p), 0);
    assert_int_equal(evict_plan_bytes_before(p), 0);
    evict_plan_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ttl_takes_only_what_was_not_pulled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_maxsize_takes_the_least_recently_pulled_first, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_blob_reached_by_local_content_stays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_tag_makes_a_pulled_revision_local, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_index_goes_before_its_children, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lone_proxied_blob_link_is_an_item, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_store, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
