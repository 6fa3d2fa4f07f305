/* The cache inventory on the filesystem driver: images and their sources, purge, verify. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inventory.h"
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
    snprintf(f->root, sizeof(f->root), "/tmp/regmirror-inv-XXXXXX");
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

static struct digest push_blob(struct registry *reg, const char *name, const char *data)
{
    struct digest d;
    char id[37];
    struct registry_upload *up;
    assert_int_equal(digest_compute(DIGEST_SHA256, data, strlen(data), &d), 0);
    assert_int_equal(registry_upload_start(reg, name, id), REG_OK);
    assert_int_equal(registry_upload_open(reg, name, id, &up), REG_OK);
    assert_int_equal(registry_upload_write(up, data, strlen(data)), REG_OK);
    assert_int_equal(registry_upload_commit(up, &d), REG_OK);
    return d;
}

/* An OCI image of config and two layers; *size receives what it stores (manifest included). */
static struct digest push_image(struct registry *reg, const char *name, const char *tag,
                                const char *config, const char *l1, const char *l2, uint64_t *size)
{
    char body[2048], c[DIGEST_STR_MAX], a[DIGEST_STR_MAX], b[DIGEST_STR_MAX], err[256];
    struct digest cd = push_blob(reg, name, config), ld1 = push_blob(reg, name, l1),
                  ld2 = push_blob(reg, name, l2), md, subj;
    bool has_subject;
    snprintf(body, sizeof(body),
             "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\","
             "\"config\":{\"mediaType\":\"" MANIFEST_MT_OCI_CONFIG "\",\"digest\":\"%s\","
             "\"size\":%zu},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\","
             "\"digest\":\"%s\",\"size\":%zu},{\"mediaType\":"
             "\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"%s\",\"size\":%zu}]}",
             digest_str(&cd, c), strlen(config), digest_str(&ld1, a), strlen(l1),
             digest_str(&ld2, b), strlen(l2));
    assert_int_equal(registry_manifest_put(reg, name, tag, body, strlen(body),
                                           MANIFEST_MT_OCI_MANIFEST, &md, &has_subject, &subj, err,
                                           sizeof(err)),
                     REG_OK);
    *size = strlen(body) + strlen(config) + strlen(l1) + strlen(l2);
    return md;
}

static bool stored(struct fixture *f, const char *data)
{
    struct digest d;
    digest_compute(DIGEST_SHA256, data, strlen(data), &d);
    return registry_blob_stored(f->reg, &d);
}

static void test_read_purge(void **state)
{
    struct fixture *f = *state;
    uint64_t size_a, size_b;
    struct digest a = push_image(f->reg, "p", "a", "cfg-a", "shared", "only-a", &size_a);
    push_image(f->reg, "p", "b", "cfg-b", "shared", "only-b", &size_b);
    /* a is proxied: its tag marker and a pull record, as the proxy writes them */
    assert_int_equal(registry_proxy_tag_set(f->reg, "p", "a", &a), REG_OK);
    assert_int_equal(registry_proxy_pulled(f->reg, "p", &a, true), REG_OK);
    push_blob(f->reg, "q", "only-a"); /* another repository links it too */

    struct inventory_repo r;
    assert_int_equal(inventory_repo_read(f->st, "p", &r), REG_OK);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.images[0].tag, "a");
    assert_false(r.images[0].local);
    assert_true(r.images[0].last_pulled > 0);
    assert_int_equal(r.images[0].size, size_a);
    assert_int_equal(r.images[0].nmanifests, 1);
    assert_string_equal(r.images[1].tag, "b");
    assert_true(r.images[1].local);
    assert_int_equal(r.images[1].last_pulled, 0);
    assert_int_equal(r.images[1].size, size_b);
    inventory_repo_free(&r);
    assert_int_equal(inventory_repo_read(f->st, "nope", &r), REG_ERR_NAME_UNKNOWN);

    struct inventory_removed out;
    assert_int_equal(inventory_purge(f->st, "p", "b", false, &out), REG_ERR_DENIED);
    inventory_removed_free(&out);
    assert_int_equal(inventory_purge(f->st, "p", "a", false, &out), REG_OK);
    assert_int_equal(out.manifests, 1);
    assert_int_equal(out.blobs, 2); /* the manifest and its config; the layers are used */
    inventory_removed_free(&out);
    assert_false(stored(f, "cfg-a"));
    assert_true(stored(f, "shared") && stored(f, "only-a") && stored(f, "cfg-b"));
    assert_int_equal(inventory_purge(f->st, "p", "a", false, &out), REG_ERR_MANIFEST_UNKNOWN);
    inventory_removed_free(&out);

    assert_int_equal(inventory_repo_read(f->st, "p", &r), REG_OK);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.images[0].tag, "b");
    inventory_repo_free(&r);
    assert_int_equal(inventory_purge(f->st, "p", "b", true, &out), REG_OK);
    inventory_removed_free(&out);
    assert_false(stored(f, "shared") || stored(f, "only-b") || stored(f, "cfg-b"));
    assert_true(stored(f, "only-a"));
}

static void test_verify(void **state)
{
    struct fixture *f = *state;
    char path[LAYOUT_PATH_MAX];
    struct digest good = push_blob(f->reg, "v", "good bytes");
    struct digest bad = push_blob(f->reg, "v", "bad bytes");
    (void)good;
    assert_int_equal(storage_put_content(f->st, layout_blob_data(path, &bad), "bad bytez", 9),
                     REG_OK);
    size_t checked = 0;
    struct inventory_removed out;
    assert_int_equal(inventory_verify(f->st, "v", NULL, NULL, NULL, &checked, &out), REG_OK);
    assert_int_equal(checked, 2);
    assert_int_equal(out.blobs, 1);
    assert_int_equal(out.n, 1);
    assert_true(digest_equal(&out.digests[0], &bad));
    inventory_removed_free(&out);
    assert_false(stored(f, "bad bytes"));
    assert_true(stored(f, "good bytes"));
    /* the whole store: what is left is whole */
    assert_int_equal(inventory_verify(f->st, NULL, NULL, NULL, NULL, &checked, &out), REG_OK);
    assert_int_equal(checked, 1);
    assert_int_equal(out.blobs, 0);
    inventory_removed_free(&out);
}

static void test_upstream(void **state)
{
    struct config_proxy_remote remotes[] = {{.host = "ghcr.io", .remoteurl = "https://ghcr.io"},
                                            {.host = "reg:5000", .remoteurl = "http://reg:5000"}};
    struct config cfg;
    memset(&cfg, 0, sizeof(cfg));
    assert_null(inventory_upstream(&cfg, "library/alpine"));
    cfg.proxy.remoteurl = "https://registry-1.docker.io";
    cfg.proxy.remotes = remotes;
    cfg.proxy.nremotes = 2;
    assert_string_equal(inventory_upstream(&cfg, "library/alpine"), cfg.proxy.remoteurl);
    assert_string_equal(inventory_upstream(&cfg, "ghcr.io/org/app"), "https://ghcr.io");
    assert_string_equal(inventory_upstream(&cfg, "reg-5000/x"), "http://reg:5000");
    assert_string_equal(inventory_upstream(&cfg, "ghcr.io"), cfg.proxy.remoteurl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_purge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify, setup, teardown),
        cmocka_unit_test(test_upstream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
