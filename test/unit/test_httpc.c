/*
 * test_httpc: the libcurl-on-libevent client against a live local peer (test/unit/peer.py,
 * started by the group setup). Each test runs its own event loop until every request it
 * started has ended, with a watchdog so a hang fails instead of blocking.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "httpc.h"
#include "peer.h"

static long stat_of(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    return v ? (long)json_integer_value(v) : 0;
}

/* ---- a recording request ---- */

enum pace { PACE_NONE, PACE_DECLINE, PACE_TAKE_THEN_PAUSE, PACE_PAUSE_RESUME_INLINE };

struct rec {
    struct httpc_req *req;
    long status;
    int headers_calls, done_calls;
    enum httpc_result res;
    char msg[256];
    char ctype[64], multi[64], xmethod[16], xctype[64];
    size_t header_count;
    long content_length;
    char *body;
    size_t len;
    bool keep_body;
    bool check_pattern; /* body is the peer's i % 251 pattern: check it, do not keep it */
    bool stop_in_headers;
    size_t cancel_after; /* cancel itself once this many bytes arrived (0: never) */
    enum pace pace;
    unsigned calls;
    bool resume_scheduled;
    struct event *resume_ev;
    struct httpc *c;
    struct httpc_req_opts child; /* started from on_headers when child.url is set */
    struct rec *child_rec;
};

static struct event_base *base;
static struct httpc *client;
static int outstanding;

static void one_less(void)
{
    if (--outstanding == 0)
        event_base_loopbreak(base);
}

static int rec_headers(struct httpc_req *r, void *ctx, long status, const struct httpc_headers *h);
static int rec_data(struct httpc_req *r, void *ctx, const char *data, size_t len);
static void rec_done(struct httpc_req *r, void *ctx, enum httpc_result res, const char *msg);

static const struct httpc_callbacks rec_cb = {rec_headers, rec_data, rec_done};

static void copy_header(char *dst, size_t cap, const struct httpc_headers *h, const char *name)
{
    const char *v = httpc_header_get(h, name);
    snprintf(dst, cap, "%s", v ? v : "");
}

static int rec_headers(struct httpc_req *r, void *ctx, long status, const struct httpc_headers *h)
{
    struct rec *x = ctx;
    x->status = status;
    x->headers_calls++;
    x->header_count = httpc_header_count(h);
    copy_header(x->ctype, sizeof(x->ctype), h, "content-type");
    copy_header(x->xmethod, sizeof(x->xmethod), h, "X-Method");
    copy_header(x->xctype, sizeof(x->xctype), h, "X-Content-Type");
    for (size_t i = 0; i < x->header_count; i++) {
        const char *name, *value;
        httpc_header_at(h, i, &name, &value);
        if (strcasecmp(name, "Content-Length") == 0)
            x->content_length = atol(value);
    }
    size_t pos = 0;
    const char *v;
    while ((v = httpc_header_next(h, "X-MULTI", &pos)) != NULL)
        strncat(x->multi, v, sizeof(x->multi) - strlen(x->multi) - 1);
    if (x->child.url) {
        x->child_rec->req = httpc_start(x->c, &x->child, &rec_cb, x->child_rec);
        assert_non_null(x->child_rec->req);
        outstanding++;
    }
    return x->stop_in_headers ? 1 : 0;
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rec *x = arg;
    x->resume_scheduled = false;
    httpc_resume(x->req);
}

static void schedule_resume(struct rec *x)
{
    struct timeval tv = {0, 1000};
    if (!x->resume_ev)
        x->resume_ev = evtimer_new(base, resume_cb, x);
    x->resume_scheduled = true;
    evtimer_add(x->resume_ev, &tv);
}

static int rec_data(struct httpc_req *r, void *ctx, const char *data, size_t len)
{
    struct rec *x = ctx;
    assert_false(x->resume_scheduled); /* no on_data while paused */
    x->calls++;
    if (x->pace == PACE_DECLINE && x->calls % 3 == 0) {
        schedule_resume(x);
        return HTTPC_PAUSE; /* not taken: the same bytes must come again */
    }
    if (x->check_pattern) {
        for (size_t i = 0; i < len; i++) {
            if ((unsigned char)data[i] != (x->len + i) % 251)
                fail_msg("byte %zu is %u", x->len + i, (unsigned char)data[i]);
        }
    }
    if (x->keep_body) {
        x->body = realloc(x->body, x->len + len + 1);
        memcpy(x->body + x->len, data, len);
        x->body[x->len + len] = '\0';
    }
    x->len += len;
    if (x->pace == PACE_TAKE_THEN_PAUSE && x->calls % 2 == 0) {
        httpc_pause(r);
        schedule_resume(x);
    }
    if (x->pace == PACE_PAUSE_RESUME_INLINE) {
        httpc_pause(r);
        httpc_resume(r);
    }
    if (x->cancel_after && x->len >= x->cancel_after) {
        httpc_cancel(r);
        httpc_cancel(r); /* idempotent */
        one_less();
    }
    return 0;
}

static void rec_done(struct httpc_req *r, void *ctx, enum httpc_result res, const char *msg)
{
    struct rec *x = ctx;
    assert_ptr_equal(r, x->req);
    x->done_calls++;
    x->res = res;
    snprintf(x->msg, sizeof(x->msg), "%s", msg);
    httpc_cancel(r); /* a no-op inside on_done */
    one_less();
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    fail_msg("watchdog: %d requests still running", outstanding);
}

/* Runs the loop until every started request has ended. */
static void run(void)
{
    struct event *wd = evtimer_new(base, watchdog_cb, NULL);
    struct timeval tv = {20, 0};
    evtimer_add(wd, &tv);
    if (outstanding > 0)
        event_base_dispatch(base);
    event_free(wd);
}

/* Runs the loop for ms milliseconds whatever happens. */
static void run_for(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void url_of(char *buf, size_t cap, const char *path)
{
    snprintf(buf, cap, "http://127.0.0.1:%d%s", peer_port, path);
}

static void start(struct rec *x, const char *method, const char *path,
                  const struct httpc_req_opts *extra)
{
    char url[256];
    struct httpc_req_opts o = {0};
    if (extra)
        o = *extra;
    url_of(url, sizeof(url), path);
    o.method = method;
    o.url = url;
    x->c = client;
    x->req = httpc_start(client, &o, &rec_cb, x);
    assert_non_null(x->req);
    outstanding++;
}

static void rec_clear(struct rec *x)
{
    free(x->body);
    if (x->resume_ev)
        event_free(x->resume_ev);
    memset(x, 0, sizeof(*x));
}

static int setup(void **state)
{
    base = event_base_new();
    client = httpc_new(base);
    outstanding = 0;
    return base && client ? 0 : -1;
}

static int teardown(void **state)
{
    httpc_free(client);
    event_base_free(base);
    client = NULL;
    base = NULL;
    return 0;
}

/* ---- tests ---- */

static void test_get(void **state)
{
    struct rec x = {.keep_body = true};
    start(&x, "GET", "/hello", NULL);
    assert_int_equal(x.done_calls, 0); /* never inside httpc_start */
    run();
    assert_int_equal(x.done_calls, 1);
    assert_int_equal(x.res, HTTPC_OK);
    assert_string_equal(x.msg, "");
    assert_int_equal(x.status, 200);
    assert_int_equal(x.headers_calls, 1);
    assert_string_equal(x.body, "hello world");
    assert_string_equal(x.ctype, "text/plain");
    assert_string_equal(x.multi, "ab");
    assert_int_equal(x.content_length, 11);
    rec_clear(&x);
}

static void test_redirects(void **state)
{
    struct rec a = {.keep_body = true}, b = {.keep_body = true};
    struct httpc_req_opts follow = {.follow_redirects = true};
    start(&a, "GET", "/redirect", NULL);
    start(&b, "GET", "/redirect", &follow);
    run();
    assert_int_equal(a.res, HTTPC_OK);
    assert_int_equal(a.status, 302);
    assert_string_equal(a.body, "moved");
    assert_int_equal(b.res, HTTPC_OK);
    assert_int_equal(b.status, 200);
    assert_int_equal(b.headers_calls, 1); /* the 302 is not shown */
    assert_string_equal(b.body, "hello world");
    rec_clear(&a);
    rec_clear(&b);
}

static void test_head(void **state)
{
    struct rec x = {.keep_body = true};
    start(&x, "HEAD", "/hello", NULL);
    run();
    assert_int_equal(x.res, HTTPC_OK);
    assert_int_equal(x.status, 200);
    assert_int_equal(x.len, 0);
    assert_string_equal(x.ctype, "text/plain");
    rec_clear(&x);
}

static void test_chunked(void **state)
{
    struct rec x = {.keep_body = true};
    start(&x, "GET", "/chunked", NULL);
    run();
    assert_int_equal(x.res, HTTPC_OK);
    assert_string_equal(x.body, "chunk 0;chunk 1;chunk 2;chunk 3;chunk 4;chunk 5;chunk 6;"
                                "chunk 7;chunk 8;chunk 9;");
    rec_clear(&x);
}

static void test_post_and_put(void **state)
{
    struct rec a = {.keep_body = true}, b = {.keep_body = true};
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    struct httpc_req_opts post = {.body = "abc", .body_len = 3};
    struct httpc_req_opts put = {.body = "{\"a\":1}", .body_len = 7, .headers = hdrs};
    start(&a, "POST", "/echo", &post);
    start(&b, "PUT", "/echo", &put);
    run();
    assert_int_equal(a.res, HTTPC_OK);
    assert_string_equal(a.body, "abc");
    assert_string_equal(a.xmethod, "POST");
    assert_string_equal(a.xctype, "-"); /* no form type slipped in */
    assert_int_equal(b.res, HTTPC_OK);
    assert_string_equal(b.body, "{\"a\":1}");
    assert_string_equal(b.xmethod, "PUT");
    assert_string_equal(b.xctype, "application/json");
    rec_clear(&a);
    rec_clear(&b);
}

static void test_status_passed_through(void **state)
{
    struct rec x = {.keep_body = true};
    start(&x, "GET", "/status/404", NULL);
    run();
    assert_int_equal(x.res, HTTPC_OK);
    assert_int_equal(x.status, 404);
    assert_string_equal(x.body, "status body");
    rec_clear(&x);
}

static void big_with_pace(enum pace pace)
{
    struct rec x = {.check_pattern = true, .pace = pace};
    start(&x, "GET", "/big?n=8388608", NULL);
    run();
    assert_int_equal(x.res, HTTPC_OK);
    assert_int_equal(x.len, 8388608);
    assert_true(x.calls > 10);
    rec_clear(&x);
}

static void test_big_decline_and_resume(void **state)
{
    big_with_pace(PACE_DECLINE);
}

static void test_big_take_pause_resume(void **state)
{
    big_with_pace(PACE_TAKE_THEN_PAUSE);
}

static void test_big_pause_resume_inline(void **state)
{
    big_with_pace(PACE_PAUSE_RESUME_INLINE);
}

static void test_cancel_mid_transfer(void **state)
{
    struct rec a = {.check_pattern = true, .cancel_after = 3000};
    struct rec b = {.check_pattern = true};
    start(&a, "GET", "/slow", NULL);
    start(&b, "GET", "/slow", NULL);
    /* b is cancelled from outside the callbacks, while paused. */
    httpc_pause(b.req);
    run_for(300);
    assert_int_equal(b.len, 0);
    httpc_cancel(b.req);
    outstanding--;
    run_for(200);
    assert_int_equal(outstanding, 0);
    assert_int_equal(a.done_calls, 0);
    assert_int_equal(b.done_calls, 0);
    assert_true(a.len >= 3000 && a.len < 1000000);
    rec_clear(&a);
    rec_clear(&b);
}

static void test_connection_refused(void **state)
{
    /* A port that was just free: bind, read the number, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);

    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", ntohs(sa.sin_port));
    struct rec x = {0};
    struct httpc_req_opts o = {.url = url};
    x.req = httpc_start(client, &o, &rec_cb, &x);
    outstanding++;
    run();
    assert_int_equal(x.done_calls, 1);
    assert_int_equal(x.res, HTTPC_ERR_CONNECT);
    assert_int_equal(x.headers_calls, 0);
    assert_true(strlen(x.msg) > 0);
    rec_clear(&x);
}

static void test_malformed_url(void **state)
{
    struct rec x = {0};
    struct httpc_req_opts o = {.url = "ftp://127.0.0.1/x"};
    x.req = httpc_start(client, &o, &rec_cb, &x);
    assert_non_null(x.req);
    assert_int_equal(x.done_calls, 0);
    outstanding++;
    run();
    assert_int_equal(x.done_calls, 1);
    assert_int_equal(x.res, HTTPC_ERR_INTERNAL);
    rec_clear(&x);
}

static void test_header_injection_refused(void **state)
{
    static const char *const hdrs[] = {"X-A: 1\r\nX-B: 2", NULL};
    struct httpc_req_opts o = {.url = "http://127.0.0.1:1/", .headers = hdrs};
    struct rec x = {0};
    assert_null(httpc_start(client, &o, &rec_cb, &x));
}

static void test_many_parallel(void **state)
{
    enum { N = 60 };
    struct rec x[N];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < N; i++) {
        x[i].check_pattern = i % 2 == 0;
        x[i].keep_body = i % 2 == 1;
        start(&x[i], "GET", i % 2 == 0 ? "/big?n=200000" : "/hello", NULL);
    }
    run();
    for (int i = 0; i < N; i++) {
        assert_int_equal(x[i].done_calls, 1);
        assert_int_equal(x[i].res, HTTPC_OK);
        if (i % 2 == 0)
            assert_int_equal(x[i].len, 200000);
        else
            assert_string_equal(x[i].body, "hello world");
        rec_clear(&x[i]);
    }
}

static void test_stop_in_headers(void **state)
{
    struct rec x = {.stop_in_headers = true};
    start(&x, "GET", "/big?n=1000000", NULL);
    run();
    assert_int_equal(x.headers_calls, 1);
    assert_int_equal(x.res, HTTPC_ABORTED);
    assert_int_equal(x.len, 0);
    rec_clear(&x);
}

static void test_header_cap(void **state)
{
    struct rec x = {0};
    start(&x, "GET", "/bigheaders", NULL);
    run();
    assert_int_equal(x.headers_calls, 0);
    assert_int_equal(x.res, HTTPC_ERR_TOO_LARGE);
    rec_clear(&x);
}

static void test_low_speed_timeout(void **state)
{
    struct rec x = {0};
    struct httpc_req_opts o = {.low_speed_time_s = 1};
    start(&x, "GET", "/stall", &o);
    run();
    assert_int_equal(x.status, 200);
    assert_int_equal(x.len, 1);
    assert_int_equal(x.res, HTTPC_ERR_TIMEOUT);
    rec_clear(&x);
}

static void test_cut_body(void **state)
{
    struct rec x = {0};
    start(&x, "GET", "/cut", NULL);
    run();
    assert_int_equal(x.len, 10);
    assert_int_equal(x.res, HTTPC_ERR_TRANSFER);
    rec_clear(&x);
}

static void test_start_from_callback(void **state)
{
    char url[256];
    struct rec child = {.keep_body = true};
    struct rec x = {.keep_body = true, .child_rec = &child};
    url_of(url, sizeof(url), "/chunked");
    x.child.url = url;
    start(&x, "GET", "/hello", NULL);
    run();
    assert_int_equal(x.res, HTTPC_OK);
    assert_int_equal(child.res, HTTPC_OK);
    assert_int_equal(child.done_calls, 1);
    assert_int_equal(strlen(child.body), 80);
    rec_clear(&x);
    rec_clear(&child);
}

static void test_free_with_running_requests(void **state)
{
    struct rec x = {.check_pattern = true}, y = {0};
    start(&x, "GET", "/slow", NULL);
    start(&y, "GET", "/hello", NULL);
    run_for(150);
    assert_true(x.len > 0);
    /* The teardown frees the client while x still runs: no callback, no leak. */
    assert_int_equal(x.done_calls, 0);
    rec_clear(&x);
    rec_clear(&y);
}

static void test_pause_excluded_from_low_speed(void **state)
{
    struct rec x = {.check_pattern = true};
    struct httpc_req_opts o = {.low_speed_time_s = 1};
    start(&x, "GET", "/big?n=300000", &o);
    httpc_pause(x.req);
    run_for(2200);
    assert_int_equal(x.done_calls, 0);
    httpc_resume(x.req);
    run();
    assert_int_equal(x.res, HTTPC_OK);
    assert_int_equal(x.len, 300000);
    rec_clear(&x);
}

static void test_result_names(void **state)
{
    assert_string_equal(httpc_result_name(HTTPC_OK), "ok");
    assert_string_equal(httpc_result_name(HTTPC_ERR_TOO_LARGE), "too-large");
    assert_string_equal(httpc_result_name((enum httpc_result)99), "unknown");
}

static void test_connection_reuse(void **state)
{
    struct rec x[3];
    memset(x, 0, sizeof(x));
    json_decref(peer_get("/_reset"));
    for (int i = 0; i < 3; i++) {
        start(&x[i], "GET", "/hello", NULL);
        run();
        assert_int_equal(x[i].res, HTTPC_OK);
        rec_clear(&x[i]);
    }
    json_t *st = peer_get("/_stats");
    assert_int_equal(stat_of(st, "conns"), 1);
    json_decref(st);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        T(test_get),
        T(test_head),
        T(test_chunked),
        T(test_post_and_put),
        T(test_status_passed_through),
        T(test_redirects),
        T(test_big_decline_and_resume),
        T(test_big_take_pause_resume),
        T(test_big_pause_resume_inline),
        T(test_cancel_mid_transfer),
        T(test_connection_refused),
        T(test_malformed_url),
        T(test_header_injection_refused),
        T(test_many_parallel),
        T(test_stop_in_headers),
        T(test_header_cap),
        T(test_low_speed_timeout),
        T(test_cut_body),
        T(test_start_from_callback),
        T(test_free_with_running_requests),
        T(test_pause_excluded_from_low_speed),
        T(test_result_names),
        T(test_connection_reuse),
    };
    return cmocka_run_group_tests(tests, peer_start, peer_stop);
}
