/*
 * Notifications: the envelope and event fields, filters, retries with the same events, and
 * the bounded queue. The receiver is our own HTTP server on the same event loop.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "http.h"
#include "httpc.h"
#include "notify.h"

#define MAX_POSTS 64

struct receiver {
    struct http_server *srv;
    int port;
    int fail_next; /* answer 500 to this many posts */
    int attempts;
    size_t nposts;
    json_t *posts[MAX_POSTS];
    char content_type[128], custom[64];
};

static void on_body(struct http_req *req, void *ctx, const char *data, size_t len)
{
    struct receiver *r = ctx;
    r->attempts++;
    const char *ct = http_req_header(req, "Content-Type");
    const char *x = http_req_header(req, "X-Custom");
    snprintf(r->content_type, sizeof(r->content_type), "%s", ct ? ct : "");
    snprintf(r->custom, sizeof(r->custom), "%s", x ? x : "");
    if (r->fail_next > 0) {
        r->fail_next--;
        http_resp_start(req, 500);
        http_resp_no_body(req, -1);
        return;
    }
    if (r->nposts < MAX_POSTS)
        r->posts[r->nposts++] = json_loadb(data, len, 0, NULL);
    http_resp_start(req, 200);
    http_resp_no_body(req, -1);
}

static void on_request(struct http_req *req, void *arg)
{
    http_req_buffer_body(req, 1 << 20, on_body, arg);
}

struct fixture {
    struct event_base *base;
    struct httpc *httpc;
    struct receiver rcv;
    struct config cfg;
    struct config_endpoint ep;
    struct config_header hdr;
    char *hdr_values[1];
    char url[64];
    char *ignored_actions[1];
    char *ignored_types[1];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    f->httpc = httpc_new(f->base);
    assert_non_null(f->httpc);
    struct http_server_handler h = {.on_request = on_request, .arg = &f->rcv};
    f->rcv.srv = http_server_new(f->base, NULL, &h);
    http_server_set_access_log(f->rcv.srv, false);
    assert_int_equal(http_server_listen(f->rcv.srv, "127.0.0.1:0"), 0);
    f->rcv.port = http_server_port(f->rcv.srv);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d/events", f->rcv.port);
    f->hdr_values[0] = "yes";
    f->hdr = (struct config_header){.name = "X-Custom", .values = f->hdr_values, .nvalues = 1};
    f->ep = (struct config_endpoint){
        .name = "unit",
        .url = f->url,
        .headers = &f->hdr,
        .nheaders = 1,
        .timeout_ms = 2000,
        .threshold = 3,
        .backoff_ms = 50,
    };
    f->cfg.http.addr = "127.0.0.1:5000";
    f->cfg.notifications.endpoints = &f->ep;
    f->cfg.notifications.nendpoints = 1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    for (size_t i = 0; i < f->rcv.nposts; i++)
        json_decref(f->rcv.posts[i]);
    http_server_free(f->rcv.srv);
    httpc_free(f->httpc);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Runs the loop until want posts arrived (or 5 s passed). */
static void run_until_posts(struct fixture *f, size_t want)
{
    time_t deadline = time(NULL) + 5;
    while (f->rcv.nposts < want && time(NULL) < deadline)
        event_base_loop(f->base, EVLOOP_ONCE);
}

/* Runs the loop until every queued event is acknowledged (or 5 s passed). */
static void run_until_drained(struct fixture *f, struct notify *n)
{
    time_t deadline = time(NULL) + 5;
    while (notify_queue_depth(n) > 0 && time(NULL) < deadline)
        event_base_loop(f->base, EVLOOP_ONCE);
}

static size_t total_events(struct fixture *f)
{
    size_t n = 0;
    for (size_t i = 0; i < f->rcv.nposts; i++)
        n += json_array_size(json_object_get(f->rcv.posts[i], "events"));
    return n;
}

static json_t *event_at(struct fixture *f, size_t k)
{
    for (size_t i = 0; i < f->rcv.nposts; i++) {
        json_t *evs = json_object_get(f->rcv.posts[i], "events");
        if (k < json_array_size(evs))
            return json_array_get(evs, k);
        k -= json_array_size(evs);
    }
    return NULL;
}

static const char *str_at(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    return json_string_value(v);
}

static void emit(struct notify *n, enum notify_action action, const char *mt, const char *tag)
{
    struct digest d;
    const char *hex = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_int_equal(digest_parse(hex, strlen(hex), &d), 0);
    struct notify_target t = {.media_type = mt,
                              .digest = &d,
                              .size = 42,
                              .repository = "lib/app",
                              .url = "http://h/v2/lib/app/manifests/x",
                              .tag = tag};
    struct notify_request rq = {"10.0.0.1", "h:5000", "PUT", "unit/1"};
    notify_emit(n, action, &t, &rq);
}

static void test_envelope(void **state)
{
    struct fixture *f = *state;
    struct notify *n = notify_new(f->base, &f->cfg, f->httpc);
    assert_non_null(n);
    emit(n, NOTIFY_PUSH, "application/vnd.oci.image.manifest.v1+json", "v1");
    emit(n, NOTIFY_PULL, NOTIFY_BLOB_MEDIA_TYPE, NULL);
    emit(n, NOTIFY_DELETE, NULL, NULL);
    run_until_drained(f, n);
    assert_int_equal(total_events(f), 3);
    assert_string_equal(f->rcv.content_type, NOTIFY_MEDIA_TYPE);
    assert_string_equal(f->rcv.custom, "yes");
    json_t *e = event_at(f, 0);
    assert_string_equal(str_at(e, "action", NULL), "push");
    assert_string_equal(str_at(e, "target", "mediaType"),
                        "application/vnd.oci.image.manifest.v1+json");
    assert_string_equal(str_at(e, "target", "repository"), "lib/app");
    assert_string_equal(str_at(e, "target", "tag"), "v1");
    assert_string_equal(str_at(e, "target", "url"), "http://h/v2/lib/app/manifests/x");
    assert_non_null(strstr(str_at(e, "target", "digest"), "sha256:e3b0"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "target"), "size")), 42);
    assert_string_equal(str_at(e, "request", "addr"), "10.0.0.1");
    assert_string_equal(str_at(e, "request", "host"), "h:5000");
    assert_string_equal(str_at(e, "request", "method"), "PUT");
    assert_string_equal(str_at(e, "request", "useragent"), "unit/1");
    assert_int_equal(strlen(str_at(e, "id", NULL)), 36);
    assert_int_equal(strlen(str_at(e, "source", "instanceID")), 36);
    assert_non_null(strstr(str_at(e, "source", "addr"), ":5000"));
    assert_true(json_is_object(json_object_get(e, "actor")));
    const char *ts = str_at(e, "timestamp", NULL);
    assert_int_equal(strlen(ts), strlen("2024-05-01T10:00:00.123456789Z"));
    assert_int_equal(ts[strlen(ts) - 1], 'Z');
    e = event_at(f, 2);
    assert_string_equal(str_at(e, "action", NULL), "delete");
    assert_null(json_object_get(json_object_get(e, "target"), "mediaType"));
    assert_null(json_object_get(json_object_get(e, "target"), "tag"));
    assert_int_equal(notify_queue_depth(n), 0);
    notify_free(n);
}

static void test_filters(void **state)
{
    struct fixture *f = *state;
    f->ignored_actions[0] = "pull";
    f->ignored_types[0] = NOTIFY_BLOB_MEDIA_TYPE;
    f->ep.ignore.actions = f->ignored_actions;
    f->ep.ignore.nactions = 1;
    f->ep.ignoredmediatypes = f->ignored_types;
    f->ep.nignoredmediatypes = 1;
    struct notify *n = notify_new(f->base, &f->cfg, f->httpc);
    emit(n, NOTIFY_PULL, "application/vnd.oci.image.manifest.v1+json", "v1"); /* action */
    emit(n, NOTIFY_PUSH, NOTIFY_BLOB_MEDIA_TYPE, NULL);                       /* media type */
    emit(n, NOTIFY_MOUNT, NOTIFY_BLOB_MEDIA_TYPE, NULL);                      /* media type */
    emit(n, NOTIFY_DELETE, NULL, NULL);                                       /* passes */
    run_until_posts(f, 1);
    assert_int_equal(total_events(f), 1);
    assert_string_equal(str_at(event_at(f, 0), "action", NULL), "delete");
    notify_free(n);
}

static void test_disabled_endpoint(void **state)
{
    struct fixture *f = *state;
    f->ep.disabled = true;
    struct notify *n = notify_new(f->base, &f->cfg, f->httpc);
    assert_non_null(n);
    emit(n, NOTIFY_PUSH, NOTIFY_BLOB_MEDIA_TYPE, NULL);
    assert_int_equal(notify_queue_depth(n), 0);
    notify_free(n);
}

static void test_retry_sends_the_same_events(void **state)
{
    struct fixture *f = *state;
    f->rcv.fail_next = 4; /* beyond the threshold: backoff kicks in, then success */
    struct notify *n = notify_new(f->base, &f->cfg, f->httpc);
    emit(n, NOTIFY_PUSH, NOTIFY_BLOB_MEDIA_TYPE, NULL);
    assert_int_equal(notify_queue_depth(n), 1);
    run_until_drained(f, n);
    assert_int_equal(f->rcv.attempts, 5);
    assert_int_equal(total_events(f), 1);
    assert_int_equal(notify_queue_depth(n), 0);
    notify_free(n);
}

static void test_bounded_queue_drops_oldest(void **state)
{
    struct fixture *f = *state;
    /* nobody listens on port 1; a long backoff keeps the events queued */
    f->ep.url = "http://127.0.0.1:1/events";
    f->ep.backoff_ms = 60000;
    f->ep.threshold = 1;
    struct notify *n = notify_new(f->base, &f->cfg, f->httpc);
    for (int i = 0; i < NOTIFY_QUEUE_MAX + 101; i++)
        emit(n, NOTIFY_PULL, NOTIFY_BLOB_MEDIA_TYPE, NULL);
    /* the first event went into the batch in flight; the ring holds the newest */
    assert_int_equal(notify_queue_depth(n), NOTIFY_QUEUE_MAX + 1);
    assert_int_equal(notify_dropped(n), 100);
    /* a few loop turns: the delivery fails, nothing is lost beyond the drops */
    for (int i = 0; i < 20; i++)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_int_equal(notify_queue_depth(n), NOTIFY_QUEUE_MAX + 1);
    notify_free(n); /* frees what is queued (ASan checks) */
}

static void test_no_endpoints_is_a_no_op(void **state)
{
    struct fixture *f = *state;
    f->cfg.notifications.nendpoints = 0;
    struct notify *n = notify_new(f->base, &f->cfg, f->httpc);
    assert_non_null(n);
    emit(n, NOTIFY_PUSH, NOTIFY_BLOB_MEDIA_TYPE, NULL);
    assert_int_equal(notify_queue_depth(n), 0);
    notify_free(n);
    notify_emit(NULL, NOTIFY_PUSH, NULL, NULL);
}

int main(void)
{
    /* As in the daemon: a peer that goes away must not kill the process (libevent writes
     * with writev, which raises SIGPIPE). */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_envelope, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled_endpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_sends_the_same_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounded_queue_drops_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_endpoints_is_a_no_op, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
