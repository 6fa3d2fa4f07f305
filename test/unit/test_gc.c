/* Mark and sweep on the filesystem driver: what is kept, what goes, referrers, dry runs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gc.h"
#include "layout.h"
#include "registry.h"

struct fixture {
    char root[64];
    struct storage *st;
    struct registry *reg;
    FILE *out; /* gc's report, discarded */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "/tmp/regmirror-gc-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    f->st = storage_fs_new(f->root);
    assert_non_null(f->st);
    struct registry_opts opts = {.delete_enabled = true};
    f->reg = registry_new(f->st, &opts);
    f->out = fopen("/dev/null", "w");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    fclose(f->out);
    registry_free(f->reg);
    storage_remove(f->st, "/docker");
    storage_free(f->st);
    rmdir(f->root);
    free(f);
    return 0;
}

/* What gc says on stderr about the input it refuses goes to /dev/null between quiet_begin and
 * quiet_end; cmocka's own report (on stderr too) stays. */
static int quiet_begin(void)
{
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int null = open("/dev/null", O_WRONLY);
    assert_true(saved >= 0 && null >= 0);
    assert_true(dup2(null, STDERR_FILENO) >= 0);
    close(null);
    return saved;
}

static void quiet_end(int saved)
{
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
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

/* An OCI image of config and layers (pushed first), optionally with a subject. */
static struct digest push_image(struct registry *reg, const char *name, const char *ref,
                                const char *config, const char *const *layers, size_t n,
                                const struct digest *subject)
{
    char body[4096], ds[DIGEST_STR_MAX];
    struct digest cd = push_blob(reg, name, config), md, subj;
    bool has_subject;
    char err[256];
    int o = snprintf(body, sizeof(body),
                     "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST "\","
                     "\"config\":{\"mediaType\":\"" MANIFEST_MT_OCI_CONFIG
                     "\",\"digest\":\"%s\",\"size\":%zu},\"layers\":[",
                     digest_str(&cd, ds), strlen(config));
    for (size_t i = 0; i < n; i++) {
        struct digest ld = push_blob(reg, name, layers[i]);
        o += snprintf(body + o, sizeof(body) - (size_t)o,
                      "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\","
                      "\"digest\":\"%s\",\"size\":%zu}",
                      i ? "," : "", digest_str(&ld, ds), strlen(layers[i]));
    }
    o += snprintf(body + o, sizeof(body) - (size_t)o, "]");
    if (subject)
        o += snprintf(body + o, sizeof(body) - (size_t)o,
                      ",\"subject\":{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST
                      "\",\"digest\":\"%s\",\"size\":1}",
                      digest_str(subject, ds));
    snprintf(body + o, sizeof(body) - (size_t)o, "}");
    char r[DIGEST_STR_MAX];
    if (!ref) {
        digest_compute(DIGEST_SHA256, body, strlen(body), &md);
        ref = digest_str(&md, r);
    }
    assert_int_equal(registry_manifest_put(reg, name, ref, body, strlen(body),
                                           MANIFEST_MT_OCI_MANIFEST, &md, &has_subject, &subj, err,
                                           sizeof(err)),
                     REG_OK);
    return md;
}

static struct digest push_index(struct registry *reg, const char *name, const char *tag,
                                const struct digest *kids, size_t n)
{
    char body[2048], ds[DIGEST_STR_MAX], err[256];
    struct digest md, subj;
    bool has_subject;
    int o = snprintf(body, sizeof(body),
                     "{\"schemaVersion\":2,\"mediaType\":\"" MANIFEST_MT_OCI_INDEX
                     "\",\"manifests\":[");
    for (size_t i = 0; i < n; i++)
        o += snprintf(body + o, sizeof(body) - (size_t)o,
                      "%s{\"mediaType\":\"" MANIFEST_MT_OCI_MANIFEST
                      "\",\"digest\":\"%s\",\"size\":1}",
                      i ? "," : "", digest_str(&kids[i], ds));
    snprintf(body + o, sizeof(body) - (size_t)o, "]}");
    assert_int_equal(registry_manifest_put(reg, name, tag, body, strlen(body),
                                           MANIFEST_MT_OCI_INDEX, &md, &has_subject, &subj, err,
                                           sizeof(err)),
                     REG_OK);
    return md;
}

static bool stored(struct fixture *f, const char *data)
{
    struct digest d;
    digest_compute(DIGEST_SHA256, data, strlen(data), &d);
    return registry_blob_stored(f->reg, &d);
}

static void test_set(void **state)
{
    struct gc_set s = {0};
    struct gc_set_entry *e;
    struct digest d[300];
    for (int i = 0; i < 300; i++) {
        char b[16];
        snprintf(b, sizeof(b), "%d", i);
        digest_compute(DIGEST_SHA256, b, strlen(b), &d[i]);
        assert_int_equal(gc_set_add(&s, &d[i], &e), 1);
        e->val = (uint64_t)i;
    }
    assert_int_equal(gc_set_add(&s, &d[7], &e), 0);
    assert_int_equal(e->val, 7);
    assert_int_equal(s.n, 300);
    for (int i = 0; i < 300; i++)
        assert_int_equal(gc_set_find(&s, &d[i])->val, (uint64_t)i);
    struct digest other;
    digest_compute(DIGEST_SHA512, "0", 1, &other);
    assert_null(gc_set_find(&s, &other));
    gc_set_free(&s);
    assert_null(gc_set_find(&s, &other));
}

static void test_refs_lenient(void **state)
{
    struct fixture *f = *state;
    /* schema1 (which regmirror does not serve) still tells GC its layers. */
    const char *layer = "schema1 layer";
    struct digest ld = push_blob(f->reg, "old", layer), md;
    char body[512], ds[DIGEST_STR_MAX];
    snprintf(body, sizeof(body), "{\"schemaVersion\":1,\"fsLayers\":[{\"blobSum\":\"%s\"}]}",
             digest_str(&ld, ds));
    digest_compute(DIGEST_SHA256, body, strlen(body), &md);
    assert_int_equal(registry_manifest_store(f->reg, "old", "v1", body, strlen(body), &md), REG_OK);
    struct gc_refs r;
    assert_int_equal(gc_manifest_refs(f->st, &md, &r), REG_OK);
    assert_int_equal(r.nblobs, 1);
    assert_true(digest_equal(&r.blobs[0], &ld));
    gc_refs_free(&r);
    /* A blob that is no JSON object is not a manifest. */
    assert_int_equal(gc_manifest_refs(f->st, &ld, &r), REG_ERR_MANIFEST_INVALID);
    struct digest absent;
    digest_compute(DIGEST_SHA256, "absent", 6, &absent);
    assert_int_equal(gc_manifest_refs(f->st, &absent, &r), REG_ERR_NOT_FOUND);
    struct gc_opts opts = {.delete_untagged = true};
    struct gc_result res;
    assert_int_equal(gc_run(f->st, &opts, f->out, &res), REG_OK);
    assert_true(stored(f, layer));
}

static void test_walk_finds_nested_and_upload_only(void **state)
{
    struct fixture *f = *state;
    const char *l[] = {"x"};
    char id[37], name[LAYOUT_PATH_MAX];
    push_image(f->reg, "a", "1", "cfg-a", l, 1, NULL);
    push_image(f->reg, "a/b/c", "1", "cfg-abc", l, 1, NULL);
    assert_int_equal(registry_upload_start(f->reg, "pending/up", id), REG_OK);
    struct gc_walk *w = gc_walk_new(f->st);
    const char *want[] = {"a", "a/b/c", "pending/up"};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(gc_walk_next(w, name), 1);
        assert_string_equal(name, want[i]);
    }
    assert_int_equal(gc_walk_next(w, name), 0);
    gc_walk_free(w);
}

static void test_mark_and_sweep(void **state)
{
    struct fixture *f = *state;
    const char *shared = "shared base layer";
    const char *l1[] = {shared, "only in v1"}, *l2[] = {shared, "only in v2"};
    const char *lold[] = {shared, "only in old"}, *lkid[] = {shared, "kid layer"};
    const char *lsig[] = {"signature"}, *lsigsig[] = {"counter signature"};
    struct digest v1 = push_image(f->reg, "app", "v1", "cfg v1", l1, 2, NULL);
    push_image(f->reg, "app", "v2", "cfg v2", l2, 2, NULL);
    /* "old" moves: its first image becomes an untagged revision. */
    struct digest old = push_image(f->reg, "app", "old", "cfg old", lold, 2, NULL);
    push_image(f->reg, "app", "old", "cfg v1", l1, 2, NULL);
    struct digest kid = push_image(f->reg, "app", NULL, "cfg kid", lkid, 2, NULL);
    push_index(f->reg, "app", "multi", &kid, 1);
    struct digest sig = push_image(f->reg, "app", NULL, "cfg sig", lsig, 1, &v1);
    push_image(f->reg, "app", NULL, "cfg sigsig", lsigsig, 1, &sig);
    /* A blob no manifest references. */
    push_blob(f->reg, "app", "orphan blob");

    struct gc_opts opts = {.dry_run = true, .delete_untagged = true};
    struct gc_result res;
    assert_int_equal(gc_run(f->st, &opts, f->out, &res), REG_OK);
    assert_int_equal(res.manifests_deleted, 1);
    /* the old manifest, its config and its own layer, the orphan */
    assert_int_equal(res.blobs_deleted, 4);
    assert_int_equal(res.bytes_freed > 0, 1);
    assert_true(stored(f, "orphan blob")); /* a dry run deletes nothing */

    /* Without --delete-untagged every revision is a root: only the orphan goes. */
    opts = (struct gc_opts){0};
    assert_int_equal(gc_run(f->st, &opts, f->out, &res), REG_OK);
    assert_int_equal(res.blobs_deleted, 1);
    assert_int_equal(res.manifests_deleted, 0);
    assert_false(stored(f, "orphan blob"));
    assert_true(stored(f, "only in old"));

    opts.delete_untagged = true;
    assert_int_equal(gc_run(f->st, &opts, f->out, &res), REG_OK);
    assert_int_equal(res.manifests_deleted, 1);
    assert_int_equal(res.blobs_deleted, 3);
    assert_false(stored(f, "only in old"));
    assert_false(stored(f, "cfg old"));
    assert_false(registry_blob_stored(f->reg, &old));
    const char *kept[] = {shared,    "only in v1", "only in v2", "cfg v1",           "cfg v2",
                          "cfg kid", "kid layer",  "signature",  "counter signature"};
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
        assert_true(stored(f, kept[i]));
    struct registry_manifest m;
    char ref[DIGEST_STR_MAX];
    assert_int_equal(registry_manifest_get(f->reg, "app", digest_str(&kid, ref), &m), REG_OK);
    registry_manifest_release(&m);
    assert_int_equal(registry_manifest_get(f->reg, "app", digest_str(&old, ref), &m),
                     REG_ERR_MANIFEST_UNKNOWN);
    uint64_t size;
    struct digest only_old;
    digest_compute(DIGEST_SHA256, "only in old", 11, &only_old);
    /* its repository link went with the blob */
    assert_int_equal(registry_blob_stat(f->reg, "app", &only_old, &size), REG_ERR_BLOB_UNKNOWN);
    /* a second run finds nothing */
    assert_int_equal(gc_run(f->st, &opts, f->out, &res), REG_OK);
    assert_int_equal(res.blobs_deleted + res.manifests_deleted, 0);
}

static void test_unreadable_manifest_stops_before_deleting(void **state)
{
    struct fixture *f = *state;
    const char *l[] = {"layer"};
    push_image(f->reg, "app", "v1", "cfg", l, 1, NULL);
    push_blob(f->reg, "app", "orphan");
    /* A tag pointing at a stored blob that is not JSON. */
    const char *junk = "not json at all";
    struct digest jd;
    digest_compute(DIGEST_SHA256, junk, strlen(junk), &jd);
    assert_int_equal(registry_manifest_store(f->reg, "app", "bad", junk, strlen(junk), &jd),
                     REG_OK);
    struct gc_opts opts = {.delete_untagged = true};
    struct gc_result res;
    int saved = quiet_begin();
    enum regerr e = gc_run(f->st, &opts, f->out, &res);
    quiet_end(saved);
    assert_int_equal(e, REG_ERR_MANIFEST_INVALID);
    assert_true(stored(f, "orphan"));
}

static void test_parse_args(void **state)
{
    struct gc_opts o;
    const char *cfg;
    char *ok[] = {"--dry-run", "-m", "conf.yml", "--force"};
    assert_int_equal(gc_parse_args(4, ok, &o, &cfg), 0);
    assert_true(o.dry_run && o.delete_untagged && o.force);
    assert_string_equal(cfg, "conf.yml");
    char *none[] = {"--dry-run"};
    char *bad[] = {"--nope", "c.yml"};
    char *two[] = {"a.yml", "b.yml"};
    int saved = quiet_begin();
    int r_none = gc_parse_args(1, none, &o, &cfg);
    int r_bad = gc_parse_args(2, bad, &o, &cfg);
    int r_two = gc_parse_args(2, two, &o, &cfg);
    quiet_end(saved);
    assert_int_equal(r_none, -1);
    assert_int_equal(r_bad, -1);
    assert_int_equal(r_two, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set),
        cmocka_unit_test_setup_teardown(test_refs_lenient, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_finds_nested_and_upload_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mark_and_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreadable_manifest_stops_before_deleting, setup,
                                        teardown),
        cmocka_unit_test(test_parse_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
