/*
 * test_cache_inmemory: the bounded in-memory blob-descriptor cache (LRU by entries), the
 * global/repository semantics shared with the redis backend, and the NULL ("no cache") cache.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "cache.h"

struct res {
    int calls, found;
    struct cache_desc d;
};

static void on_get(void *ctx, int found, const struct cache_desc *d)
{
    struct res *r = ctx;
    r->calls++;
    r->found = found;
    if (d)
        r->d = *d;
}

static struct digest mkdigest(unsigned n)
{
    struct digest d = {.algo = DIGEST_SHA256};
    char hex[65];
    snprintf(hex, sizeof(hex), "%08x%056x", n * 2654435761u, n);
    memcpy(d.hex, hex, 65);
    return d;
}

static struct cache_desc mkdesc(unsigned n, uint64_t size, const char *mt)
{
    struct cache_desc c;
    memset(&c, 0, sizeof(c));
    c.digest = mkdigest(n);
    c.size = size;
    snprintf(c.media_type, sizeof(c.media_type), "%s", mt);
    return c;
}

/* Runs a get, which must answer inline, and returns found. */
static int get(struct cache *c, const char *repo, unsigned n, struct res *r)
{
    struct digest d = mkdigest(n);
    memset(r, 0, sizeof(*r));
    assert_null(cache_get(c, repo, &d, on_get, r));
    assert_int_equal(r->calls, 1);
    return r->found;
}

static void test_global_and_repo(void **state)
{
    struct cache *c = cache_inmemory_new(0);
    struct res r;
    struct cache_desc d1 = mkdesc(1, 1234, "application/vnd.oci.image.layer.v1.tar+gzip");
    struct digest dg = mkdigest(1);

    assert_non_null(c);
    assert_int_equal(get(c, NULL, 1, &r), 0);
    cache_put(c, "library/alpine", &d1);
    assert_int_equal(get(c, NULL, 1, &r), 1);
    assert_true(digest_equal(&r.d.digest, &d1.digest));
    assert_int_equal(r.d.size, 1234);
    assert_string_equal(r.d.media_type, d1.media_type);
    assert_int_equal(get(c, "library/alpine", 1, &r), 1);
    /* linked into one repository only */
    assert_int_equal(get(c, "library/busybox", 1, &r), 0);

    /* per-repository media type; the global one stays the first recorded */
    struct cache_desc d1b = d1;
    snprintf(d1b.media_type, sizeof(d1b.media_type), "application/octet-stream");
    cache_put(c, "other/repo", &d1b);
    assert_int_equal(get(c, "other/repo", 1, &r), 1);
    assert_string_equal(r.d.media_type, "application/octet-stream");
    assert_int_equal(get(c, NULL, 1, &r), 1);
    assert_string_equal(r.d.media_type, d1.media_type);

    /* unlink from one repository */
    cache_forget(c, "library/alpine", &dg);
    assert_int_equal(get(c, "library/alpine", 1, &r), 0);
    assert_int_equal(get(c, "other/repo", 1, &r), 1);
    /* blob data gone: every repository misses */
    cache_forget(c, NULL, &dg);
    assert_int_equal(get(c, NULL, 1, &r), 0);
    assert_int_equal(get(c, "other/repo", 1, &r), 0);
    /* forgetting what is not there is fine */
    cache_forget(c, NULL, &dg);
    cache_forget(c, "nope", &dg);
    cache_free(c);
}

static void test_lru_bound(void **state)
{
    struct cache *c = cache_inmemory_new(3);
    struct res r;
    for (unsigned i = 1; i <= 3; i++) {
        struct cache_desc d = mkdesc(i, i, "x");
        cache_put(c, NULL, &d);
    }
    /* touch 1, so 2 is the least recently used */
    assert_int_equal(get(c, NULL, 1, &r), 1);
    struct cache_desc d4 = mkdesc(4, 4, "x");
    cache_put(c, NULL, &d4);
    assert_int_equal(get(c, NULL, 2, &r), 0);
    assert_int_equal(get(c, NULL, 1, &r), 1);
    assert_int_equal(get(c, NULL, 3, &r), 1);
    assert_int_equal(get(c, NULL, 4, &r), 1);
    /* updating an entry does not grow the cache */
    d4.size = 44;
    cache_put(c, NULL, &d4);
    assert_int_equal(get(c, NULL, 4, &r), 1);
    assert_int_equal(r.d.size, 44);
    assert_int_equal(get(c, NULL, 1, &r), 1);
    assert_int_equal(get(c, NULL, 3, &r), 1);
    cache_free(c);
}

static void test_many_entries(void **state)
{
    /* far more puts than the bound: memory stays bounded, the newest entries are there */
    const unsigned max = 1000, n = 50000;
    struct cache *c = cache_inmemory_new(max);
    struct res r;
    unsigned hits = 0;
    for (unsigned i = 0; i < n; i++) {
        struct cache_desc d = mkdesc(i, i, "application/vnd.oci.image.layer.v1.tar");
        char repo[32];
        snprintf(repo, sizeof(repo), "repo/%u", i % 7);
        cache_put(c, i % 2 ? repo : NULL, &d);
    }
    for (unsigned i = 0; i < n; i++)
        hits += get(c, NULL, i, &r) == 1;
    assert_true(hits <= max);
    assert_true(hits >= max / 3);
    for (unsigned i = n - 100; i < n; i++) {
        assert_int_equal(get(c, NULL, i, &r), 1);
        assert_int_equal(r.d.size, i);
    }
    cache_free(c);
}

static void test_bad_input(void **state)
{
    struct cache *c = cache_inmemory_new(10);
    struct res r;
    struct cache_desc d = mkdesc(9, 9, "x");
    struct digest bad = d.digest;
    char longrepo[300];

    bad.hex[10] = '\0'; /* wrong length */
    memset(&r, 0, sizeof(r));
    assert_null(cache_get(c, NULL, &bad, on_get, &r));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.found, 0);

    memset(longrepo, 'a', sizeof(longrepo) - 1);
    longrepo[sizeof(longrepo) - 1] = '\0';
    cache_put(c, longrepo, &d); /* ignored */
    assert_int_equal(get(c, NULL, 9, &r), 0);
    assert_int_equal(get(c, longrepo, 9, &r), 0);

    /* media type not NUL-terminated within the array: not cached */
    memset(d.media_type, 'm', sizeof(d.media_type));
    cache_put(c, NULL, &d);
    assert_int_equal(get(c, NULL, 9, &r), 0);
    cache_free(c);
}

static void test_null_cache(void **state)
{
    struct res r;
    struct digest d = mkdigest(1);
    struct cache_desc desc = mkdesc(1, 1, "x");
    memset(&r, 0, sizeof(r));
    assert_null(cache_get(NULL, NULL, &d, on_get, &r));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.found, -1);
    cache_put(NULL, "a", &desc);
    cache_forget(NULL, "a", &d);
    assert_int_equal(cache_pending(NULL), 0);
    cache_free(NULL);
}

static void test_single_entry(void **state)
{
    /* a repository put with room for one entry evicts its own global entry: a miss, never
     * a wrong answer */
    struct cache *c = cache_inmemory_new(1);
    struct res r;
    struct cache_desc d = mkdesc(5, 5, "x");
    cache_put(c, "a/b", &d);
    assert_int_equal(get(c, "a/b", 5, &r), 0);
    cache_put(c, NULL, &d);
    assert_int_equal(get(c, NULL, 5, &r), 1);
    cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_global_and_repo), cmocka_unit_test(test_lru_bound),
        cmocka_unit_test(test_many_entries),    cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_null_cache),      cmocka_unit_test(test_single_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
