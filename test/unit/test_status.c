/* Status page figures: the metrics history windows and series, the pulls table, and
 * status_json without a proxy. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "metrics.h"
#include "status.h"

static void test_windows(void **state)
{
    struct metrics_traffic t;
    metrics_reset();
    metrics_add(METRICS_CACHE_HIT_BLOB, 2);
    metrics_history_tick(1000); /* the start: two hits before it */
    metrics_add(METRICS_CACHE_HIT_BLOB, 3);
    metrics_history_tick(1005); /* younger than a step: no sample */
    metrics_history_tick(1010);
    metrics_add(METRICS_BYTES_FROM_UPSTREAM, 100);
    metrics_add(METRICS_CACHE_MISS_MANIFEST, 1);

    /* Younger than the window: everything since the start, the hits before it too. */
    metrics_history_window(1030, 60, &t);
    assert_int_equal(t.blob_hits, 5);
    assert_int_equal(t.bytes_upstream, 100);
    assert_int_equal(t.manifest_misses, 1);
    /* The last 15 s reach back to the sample at 1010. */
    metrics_history_window(1025, 15, &t);
    assert_int_equal(t.blob_hits, 0);
    assert_int_equal(t.bytes_upstream, 100);
    /* The last 20 s reach back to the start's sample. */
    metrics_history_window(1025, 25, &t);
    assert_int_equal(t.blob_hits, 3);
    metrics_traffic_now(&t);
    assert_int_equal(t.blob_hits, 5);
}

static void test_series(void **state)
{
    struct metrics_traffic s[3];
    metrics_reset();
    metrics_history_tick(0);
    metrics_add(METRICS_CACHE_HIT_MANIFEST, 1);
    metrics_history_tick(60);
    metrics_add(METRICS_CACHE_HIT_MANIFEST, 2);
    metrics_history_tick(120);
    metrics_add(METRICS_CACHE_HIT_MANIFEST, 4);
    metrics_history_series(180, 60, s, 3);
    assert_int_equal(s[0].manifest_hits, 1);
    assert_int_equal(s[1].manifest_hits, 2);
    assert_int_equal(s[2].manifest_hits, 4);
    /* Windows before the start are empty. */
    metrics_history_series(180, 60, s, 2);
    assert_int_equal(s[0].manifest_hits, 2);
    metrics_history_series(120, 60, s, 3);
    assert_int_equal(s[0].manifest_hits, 0);
    assert_int_equal(s[1].manifest_hits, 1);
}

static void test_ring_wraps(void **state)
{
    struct metrics_traffic t;
    metrics_reset();
    int64_t t0 = 5000;
    for (int64_t i = 0; i <= 2 * METRICS_HISTORY_SPAN_S / METRICS_HISTORY_STEP_S; i++) {
        metrics_inc(METRICS_REQUESTS);
        metrics_history_tick(t0 + i * METRICS_HISTORY_STEP_S);
    }
    int64_t now = t0 + 2 * METRICS_HISTORY_SPAN_S;
    metrics_history_window(now, 60, &t);
    assert_int_equal(t.requests, 60 / METRICS_HISTORY_STEP_S);
    metrics_history_window(now, METRICS_HISTORY_SPAN_S, &t);
    assert_int_equal(t.requests, METRICS_HISTORY_SPAN_S / METRICS_HISTORY_STEP_S);
    /* Beyond the span the oldest sample kept bounds the window. */
    metrics_history_window(now, 3 * METRICS_HISTORY_SPAN_S, &t);
    assert_true(t.requests <= METRICS_HISTORY_SPAN_S / METRICS_HISTORY_STEP_S + 1);
}

static void test_top_pulls(void **state)
{
    struct metrics_repo_pulls top[4];
    metrics_reset();
    metrics_request("/v2/library/alpine/manifests/3.19", HTTP_GET, 200, 10);
    metrics_request("/v2/library/alpine/manifests/sha256:ab", HTTP_GET, 200, 10);
    metrics_request("/v2/a/b/manifests/1", HTTP_GET, 200, 10);
    /* not pulls: a HEAD, a failure, a blob */
    metrics_request("/v2/a/b/manifests/1", HTTP_HEAD, 200, 10);
    metrics_request("/v2/a/b/manifests/2", HTTP_GET, 404, 10);
    metrics_request("/v2/a/b/blobs/sha256:ab", HTTP_GET, 200, 10);
    /* a name holding the marker, under a prefix */
    metrics_request("/p/v2/x/manifests/manifests/7", HTTP_GET, 200, 10);
    size_t n = metrics_top_pulls(top, 4);
    assert_int_equal(n, 3);
    assert_string_equal(top[0].name, "library/alpine");
    assert_int_equal(top[0].pulls, 2);
    assert_string_equal(top[1].name, "a/b");
    assert_string_equal(top[2].name, "x/manifests");
    struct metrics_traffic t;
    metrics_traffic_now(&t);
    assert_int_equal(t.requests, 7);
}

static void test_top_pulls_bounded(void **state)
{
    char name[64];
    struct metrics_repo_pulls top[2];
    metrics_reset();
    for (int k = 0; k < 5; k++)
        metrics_note_pull("busy", 4);
    for (int i = 0; i < METRICS_TOP_SLOTS * 3; i++) {
        int n = snprintf(name, sizeof(name), "r%d", i);
        metrics_note_pull(name, (size_t)n);
    }
    /* The busy one keeps its place; the table never grows past its slots. */
    assert_int_equal(metrics_top_pulls(top, 2), 2);
    assert_string_equal(top[0].name, "busy");
    assert_int_equal(top[0].pulls, 5);
    static struct metrics_repo_pulls all[METRICS_TOP_SLOTS + 8];
    assert_int_equal(metrics_top_pulls(all, METRICS_TOP_SLOTS + 8), METRICS_TOP_SLOTS);
}

static void test_status_json_without_proxy(void **state)
{
    struct config cfg;
    memset(&cfg, 0, sizeof(cfg));
    metrics_reset();
    struct event_base *base = event_base_new();
    struct status *s = status_new(base, "1.2.3", &cfg, NULL, NULL);
    assert_non_null(s);
    metrics_add(METRICS_CACHE_HIT_BLOB, 3);
    metrics_add(METRICS_CACHE_MISS_BLOB, 1);
    metrics_add(METRICS_BYTES_FROM_CACHE, 300);
    metrics_add(METRICS_BYTES_FROM_UPSTREAM, 100);
    json_t *o = status_json(s, 1700000000, 5000);
    assert_non_null(o);
    json_t *total = json_object_get(json_object_get(o, "traffic"), "total");
    assert_int_equal(json_integer_value(json_object_get(total, "blob_hits")), 3);
    assert_true(json_real_value(json_object_get(total, "blob_hit_ratio")) == 0.75);
    assert_true(json_is_null(json_object_get(total, "manifest_hit_ratio")));
    assert_true(json_real_value(json_object_get(total, "saved_ratio")) == 0.75);
    assert_int_equal(json_array_size(json_object_get(o, "upstreams")), 0);
    assert_int_equal(json_array_size(json_object_get(o, "inflight")), 0);
    json_t *hist = json_object_get(o, "history");
    assert_int_equal(json_array_size(json_object_get(hist, "hits")), 60);
    assert_true(json_is_null(json_object_get(json_object_get(o, "storage"), "stored_bytes")));
    assert_string_equal(json_string_value(json_object_get(o, "now")), "2023-11-14T22:13:20Z");
    assert_string_equal(json_string_value(json_object_get(o, "version")), "1.2.3");
    json_decref(o);
    status_free(s);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows),           cmocka_unit_test(test_series),
        cmocka_unit_test(test_ring_wraps),        cmocka_unit_test(test_top_pulls),
        cmocka_unit_test(test_top_pulls_bounded), cmocka_unit_test(test_status_json_without_proxy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
