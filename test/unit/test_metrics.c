/* Metrics: route classification, counters and histograms in the exposition, the storage
 * wrapper's error counts, collectors, label escaping. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics.h"
#include "storage.h"

/* The exposition as a NUL-terminated string (caller frees). */
static char *render(void)
{
    struct evbuffer *b = evbuffer_new();
    metrics_render(b);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

/* True when the exposition has exactly this line. */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = strstr(text, line); p; p = strstr(p + 1, line)) {
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return true;
    }
    return false;
}

static void test_route_of(void **state)
{
    static const struct {
        const char *path;
        enum metrics_route want;
    } cases[] = {
        {"/v2/", METRICS_ROUTE_BASE},
        {"/v2", METRICS_ROUTE_BASE},
        {"/prefix/v2/", METRICS_ROUTE_BASE},
        {"/v2/_catalog", METRICS_ROUTE_CATALOG},
        {"/v2/a/b/tags/list", METRICS_ROUTE_TAGS},
        {"/v2/library/alpine/manifests/3.19", METRICS_ROUTE_MANIFEST},
        {"/v2/a/blobs/sha256:abc", METRICS_ROUTE_BLOB},
        {"/v2/a/blobs/uploads/", METRICS_ROUTE_UPLOAD},
        {"/v2/a/blobs/uploads/0b6c-11", METRICS_ROUTE_UPLOAD},
        {"/v2/a/referrers/sha256:abc", METRICS_ROUTE_REFERRERS},
        /* names may contain the markers: the last one decides */
        {"/v2/blobs/manifests/latest", METRICS_ROUTE_MANIFEST},
        {"/v2/x/manifests/blobs/sha256:abc", METRICS_ROUTE_BLOB},
        {"/v2/uploads/blobs/uploadsx/blobs/sha256:1", METRICS_ROUTE_BLOB},
        {"/healthz", METRICS_ROUTE_HEALTHZ},
        {"/", METRICS_ROUTE_OTHER},
        {"/favicon.ico", METRICS_ROUTE_OTHER},
        {"/v2/a/nothing", METRICS_ROUTE_OTHER},
        {"", METRICS_ROUTE_OTHER},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (metrics_route_of(cases[i].path) != cases[i].want)
            fail_msg("%s: got %s, want %s", cases[i].path,
                     metrics_route_name(metrics_route_of(cases[i].path)),
                     metrics_route_name(cases[i].want));
    }
}

static void test_requests_and_histogram(void **state)
{
    metrics_reset();
    metrics_request("/v2/a/blobs/sha256:1", HTTP_GET, 200, 3000);    /* 3 ms */
    metrics_request("/v2/a/blobs/sha256:1", HTTP_GET, 200, 700000);  /* 0.7 s */
    metrics_request("/v2/a/blobs/sha256:1", HTTP_GET, 404, 1000);    /* 1 ms */
    metrics_request("/v2/a/manifests/v1", HTTP_PUT, 201, 400000000); /* 400 s: +Inf */
    metrics_request("/v2/a/manifests/v1", HTTP_OPTIONS, 599, 10);    /* other status */
    char *t = render();
    assert_true(has_line(t, "regmirror_http_requests_total{route=\"blob\",method=\"GET\","
                            "code=\"200\"} 2"));
    assert_true(has_line(t, "regmirror_http_requests_total{route=\"blob\",method=\"GET\","
                            "code=\"404\"} 1"));
    assert_true(has_line(t, "regmirror_http_requests_total{route=\"manifest\",method=\"PUT\","
                            "code=\"201\"} 1"));
    assert_true(has_line(t, "regmirror_http_requests_total{route=\"manifest\",method=\"OTHER\","
                            "code=\"other\"} 1"));
    /* cumulative buckets */
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_bucket{route=\"blob\","
                            "method=\"GET\",le=\"0.005\"} 2"));
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_bucket{route=\"blob\","
                            "method=\"GET\",le=\"0.5\"} 2"));
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_bucket{route=\"blob\","
                            "method=\"GET\",le=\"1\"} 3"));
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_bucket{route=\"blob\","
                            "method=\"GET\",le=\"+Inf\"} 3"));
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_sum{route=\"blob\","
                            "method=\"GET\"} 0.704000"));
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_count{route=\"blob\","
                            "method=\"GET\"} 3"));
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_bucket{route=\"manifest\","
                            "method=\"PUT\",le=\"300\"} 0"));
    assert_true(has_line(t, "regmirror_http_request_duration_seconds_bucket{route=\"manifest\","
                            "method=\"PUT\",le=\"+Inf\"} 1"));
    /* families that saw nothing print no samples, but their header */
    assert_null(strstr(t, "route=\"tags\""));
    assert_non_null(strstr(t, "# TYPE regmirror_http_request_duration_seconds histogram\n"));
    free(t);
}

static void test_counters_and_ratio(void **state)
{
    metrics_reset();
    metrics_add(METRICS_BYTES_FROM_CACHE, 1000);
    metrics_add(METRICS_BYTES_FROM_UPSTREAM, 250);
    metrics_inc(METRICS_CACHE_HIT_BLOB);
    metrics_inc(METRICS_CACHE_HIT_BLOB);
    metrics_inc(METRICS_CACHE_HIT_MANIFEST);
    metrics_inc(METRICS_CACHE_MISS_BLOB);
    metrics_inc(METRICS_GAUGE_UPSTREAM_INFLIGHT);
    metrics_inc(METRICS_GAUGE_UPSTREAM_INFLIGHT);
    metrics_dec(METRICS_GAUGE_UPSTREAM_INFLIGHT);
    metrics_inc(METRICS_TOKEN_FETCHES);
    metrics_inc(METRICS_UPSTREAM_429);
    metrics_inc(METRICS_JOINED_WAITERS);
    char *t = render();
    assert_true(has_line(t, "regmirror_blob_bytes_total{source=\"cache\"} 1000"));
    assert_true(has_line(t, "regmirror_blob_bytes_total{source=\"upstream\"} 250"));
    assert_true(
        has_line(t, "regmirror_proxy_cache_requests_total{kind=\"blob\",result=\"hit\"} 2"));
    assert_true(has_line(t, "regmirror_proxy_cache_hit_ratio 0.750000"));
    assert_true(has_line(t, "regmirror_upstream_requests_in_flight 1"));
    assert_true(has_line(t, "regmirror_upstream_token_fetches_total 1"));
    assert_true(has_line(t, "regmirror_upstream_rate_limited_total 1"));
    assert_true(has_line(t, "regmirror_proxy_joined_waiters_total 1"));
    free(t);
    /* a gauge never goes below zero */
    metrics_dec(METRICS_GAUGE_UPSTREAM_INFLIGHT);
    metrics_dec(METRICS_GAUGE_UPSTREAM_INFLIGHT);
    assert_int_equal(metrics_counters[METRICS_GAUGE_UPSTREAM_INFLIGHT], 0);
}

/* A driver whose stat answers what the test says and whose other ops are never called. */
static enum regerr fake_result;
static int fake_freed;
static enum regerr fake_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    out->size = 1;
    return fake_result;
}
static void fake_free(struct storage *s)
{
    fake_freed++;
}
static const struct storage_ops fake_ops = {.name = "fake", .stat = fake_stat, .free = fake_free};

static void test_storage_wrapper_counts_errors(void **state)
{
    metrics_reset();
    struct storage inner = {&fake_ops, false};
    struct storage *st = metrics_storage_wrap(&inner);
    assert_non_null(st);
    assert_ptr_not_equal(st, &inner);
    assert_string_equal(st->ops->name, "fake");
    struct storage_stat s;
    fake_result = REG_OK;
    assert_int_equal(storage_stat(st, "/a", &s), REG_OK);
    assert_int_equal(s.size, 1);
    fake_result = REG_ERR_NOT_FOUND; /* absent paths are no errors */
    assert_int_equal(storage_stat(st, "/a", &s), REG_ERR_NOT_FOUND);
    fake_result = REG_ERR_INTERNAL;
    assert_int_equal(storage_stat(st, "/a", &s), REG_ERR_INTERNAL);
    fake_result = REG_ERR_UNAVAILABLE;
    assert_int_equal(storage_stat(st, "/a", &s), REG_ERR_UNAVAILABLE);
    char *t = render();
    assert_true(has_line(t, "regmirror_storage_errors_total{op=\"stat\"} 2"));
    assert_true(has_line(t, "regmirror_storage_errors_total{op=\"get_content\"} 0"));
    free(t);
    storage_free(st); /* frees the inner driver too */
    assert_int_equal(fake_freed, 1);
    /* NULL in, NULL out */
    assert_null(metrics_storage_wrap(NULL));
}

static void collector(struct evbuffer *out, void *ctx)
{
    evbuffer_add_printf(out, "x_total{name=\"");
    metrics_escape_label(out, ctx);
    evbuffer_add_printf(out, "\"} 7\n");
}

static void test_collectors_and_escaping(void **state)
{
    metrics_reset();
    char name[] = "a\"b\\c\nd";
    assert_int_equal(metrics_add_collector(collector, name), 0);
    char *t = render();
    assert_true(has_line(t, "x_total{name=\"a\\\"b\\\\c\\nd\"} 7"));
    free(t);
    metrics_remove_collector(collector, name);
    t = render();
    assert_null(strstr(t, "x_total"));
    free(t);
    /* the table is bounded */
    int added = 0;
    while (metrics_add_collector(collector, name) == 0)
        added++;
    assert_int_equal(added, METRICS_COLLECTORS_MAX);
    metrics_remove_collector(collector, name);
    assert_int_equal(metrics_add_collector(collector, name), 0);
    metrics_remove_collector(collector, name);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_of),
        cmocka_unit_test(test_requests_and_histogram),
        cmocka_unit_test(test_counters_and_ratio),
        cmocka_unit_test(test_storage_wrapper_counts_errors),
        cmocka_unit_test(test_collectors_and_escaping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
