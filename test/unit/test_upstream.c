/*
 * test_upstream: the remote-registry client against test/unit/peer.py, which plays a registry
 * with Bearer and Basic challenges, a token endpoint that checks credentials, a CDN host on
 * 127.0.0.2, flaky and rate-limited repositories. The peer counts what it saw (/_stats), so
 * the tests check the wire traffic, not just the results.
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "httpc.h"
#include "log.h"
#include "upstream.h"
#include "peer.h"

static json_t *stats;

static long stat_of(const char *key)
{
    json_decref(stats);
    stats = peer_get("/_stats");
    json_t *v = json_object_get(stats, key);
    return v ? (long)json_integer_value(v) : 0;
}

/* ---- a recording fetch ---- */

struct urec {
    struct upstream_req *req;
    int responses, done;
    long status;
    struct upstream_outcome o;
    char msg[256];
    char ctype[96], xaccept[256];
    char *body;
    size_t len;
    bool pattern; /* the body is the peer's i % 251 pattern from offset */
    size_t offset;
    bool pause_in_response; /* pause in on_response, resume from a timer */
    bool pause_forever;     /* pause in on_response and never resume */
    bool decline;           /* answer UPSTREAM_PAUSE now and then */
    bool take_and_pause;    /* take, upstream_pause, resume from a timer */
    size_t cancel_after;
    unsigned calls;
    struct event *resume_ev;
    bool resume_pending;
};

static struct event_base *base;
static struct httpc *client;
static struct upstream *up;
static int outstanding;

static void one_less(void)
{
    if (--outstanding == 0)
        event_base_loopbreak(base);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct urec *x = arg;
    x->resume_pending = false;
    upstream_resume(x->req);
}

static void resume_later(struct urec *x)
{
    struct timeval tv = {0, 2000};
    if (!x->resume_ev)
        x->resume_ev = evtimer_new(base, resume_cb, x);
    x->resume_pending = true;
    evtimer_add(x->resume_ev, &tv);
}

static int on_response(struct upstream_req *r, void *ctx, long status,
                       const struct httpc_headers *h)
{
    struct urec *x = ctx;
    const char *v;
    x->responses++;
    x->status = status;
    v = httpc_header_get(h, "Content-Type");
    snprintf(x->ctype, sizeof(x->ctype), "%s", v ? v : "");
    v = httpc_header_get(h, "X-Accept");
    snprintf(x->xaccept, sizeof(x->xaccept), "%s", v ? v : "");
    if (x->pause_in_response || x->pause_forever)
        upstream_pause(r);
    if (x->pause_in_response)
        resume_later(x);
    return 0;
}

static int on_data(struct upstream_req *r, void *ctx, const char *data, size_t len)
{
    struct urec *x = ctx;
    assert_int_equal(x->responses, 1);
    assert_false(x->resume_pending);
    x->calls++;
    if (x->decline && x->calls % 3 == 0) {
        resume_later(x);
        return UPSTREAM_PAUSE;
    }
    if (x->pattern) {
        for (size_t i = 0; i < len; i++) {
            if ((unsigned char)data[i] != (x->offset + x->len + i) % 251)
                fail_msg("byte %zu is %u", x->len + i, (unsigned char)data[i]);
        }
    } else {
        x->body = realloc(x->body, x->len + len + 1);
        memcpy(x->body + x->len, data, len);
        x->body[x->len + len] = '\0';
    }
    x->len += len;
    if (x->take_and_pause && x->calls % 2 == 0) {
        upstream_pause(r);
        resume_later(x);
    }
    if (x->cancel_after && x->len >= x->cancel_after) {
        upstream_cancel(r);
        upstream_cancel(r);
        one_less();
    }
    return 0;
}

static void on_done(struct upstream_req *r, void *ctx, const struct upstream_outcome *o)
{
    struct urec *x = ctx;
    assert_ptr_equal(r, x->req);
    x->done++;
    x->o = *o;
    snprintf(x->msg, sizeof(x->msg), "%s", o->message);
    x->o.message = x->msg;
    upstream_cancel(r); /* a no-op inside on_done */
    one_less();
}

static const struct upstream_callbacks ucb = {on_response, on_data, on_done};

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    fail_msg("watchdog: %d fetches still running", outstanding);
}

static void run(void)
{
    struct event *wd = evtimer_new(base, watchdog_cb, NULL);
    struct timeval tv = {20, 0};
    evtimer_add(wd, &tv);
    if (outstanding > 0)
        event_base_dispatch(base);
    event_free(wd);
}

static void run_for(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void fetch_on(struct upstream *u, struct urec *x, const char *method, const char *repo,
                     const char *suffix, const char *const *hdrs)
{
    x->req = upstream_fetch(u, method, repo, suffix, hdrs, &ucb, x);
    assert_non_null(x->req);
    outstanding++;
}

static void fetch(struct urec *x, const char *method, const char *repo, const char *suffix)
{
    fetch_on(up, x, method, repo, suffix, NULL);
}

static void urec_clear(struct urec *x)
{
    free(x->body);
    if (x->resume_ev)
        event_free(x->resume_ev);
    memset(x, 0, sizeof(*x));
}

static struct upstream *new_upstream(const char *user, const char *password)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", peer_port);
    struct upstream_config cfg = {.remoteurl = url, .username = user, .password = password};
    struct upstream *u = upstream_new(client, &cfg);
    assert_non_null(u);
    return u;
}

static int setup(void **state)
{
    base = event_base_new();
    client = httpc_new(base);
    outstanding = 0;
    json_decref(peer_get("/_reset"));
    up = new_upstream(NULL, NULL);
    return 0;
}

static int teardown(void **state)
{
    upstream_free(up);
    httpc_free(client);
    event_base_free(base);
    json_decref(stats);
    stats = NULL;
    up = NULL;
    client = NULL;
    base = NULL;
    return 0;
}

#define BLOB "blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* ---- tests ---- */

static void test_token_flow(void **state)
{
    static const char *const accept[] = {
        "Accept: application/vnd.oci.image.index.v1+json",
        "Accept: application/vnd.docker.distribution.manifest.v2+json", NULL};
    struct urec a = {0}, b = {0};
    fetch_on(up, &a, "GET", "lib/alpine", "manifests/latest", accept);
    assert_int_equal(a.done, 0); /* never inside upstream_fetch */
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(a.o.status, 200);
    assert_int_equal(a.responses, 1);
    assert_string_equal(a.ctype, "application/vnd.oci.image.manifest.v1+json");
    assert_non_null(strstr(a.body, "\"lib/alpine\""));
    assert_string_equal(a.xaccept, "application/vnd.oci.image.index.v1+json,"
                                   "application/vnd.docker.distribution.manifest.v2+json");
    assert_int_equal(stat_of("token"), 1);
    assert_int_equal(stat_of("token_auth"), 0); /* anonymous */
    assert_int_equal(stat_of("401"), 1);
    assert_int_equal(stat_of("GET /v2/lib/alpine/manifests/latest"), 2);

    /* The cached token goes up front: no 401, no token request. */
    fetch(&b, "GET", "lib/alpine", "manifests/latest");
    run();
    assert_int_equal(b.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("token"), 1);
    assert_int_equal(stat_of("401"), 1);
    assert_int_equal(stat_of("GET /v2/lib/alpine/manifests/latest"), 3);
    urec_clear(&a);
    urec_clear(&b);
}

static void test_concurrent_requests_share_one_token(void **state)
{
    enum { N = 12 };
    struct urec x[N];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < N; i++) {
        x[i].pattern = true;
        fetch(&x[i], "GET", "team/app", BLOB);
    }
    run();
    for (int i = 0; i < N; i++) {
        assert_int_equal(x[i].o.result, UPSTREAM_OK);
        assert_int_equal(x[i].len, 1000);
        urec_clear(&x[i]);
    }
    assert_int_equal(stat_of("token"), 1);
    assert_int_equal(stat_of("401"), N);

    /* The realm is known now: a new repository's token is fetched before its first request,
     * once for all the concurrent requests. */
    for (int i = 0; i < N; i++) {
        x[i].pattern = true;
        fetch(&x[i], "GET", "team/other", BLOB);
    }
    run();
    for (int i = 0; i < N; i++) {
        assert_int_equal(x[i].o.result, UPSTREAM_OK);
        urec_clear(&x[i]);
    }
    assert_int_equal(stat_of("token"), 2);
    assert_int_equal(stat_of("401"), N);
}

static void test_expired_token_refetched(void **state)
{
    struct urec a = {0}, b = {0}, c = {0};
    fetch(&a, "GET", "short/x", "manifests/1");
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    fetch(&b, "GET", "short/x", "manifests/1");
    run();
    assert_int_equal(b.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("token"), 1); /* still fresh */
    run_for(1100);
    fetch(&c, "GET", "short/x", "manifests/1");
    run();
    assert_int_equal(c.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("token"), 2);
    assert_int_equal(stat_of("401"), 1);
    urec_clear(&a);
    urec_clear(&b);
    urec_clear(&c);
}

/* More scopes than the token cache holds (256): the soonest-expiring token makes room, and
 * the cache goes on working. */
static void test_token_cache_full(void **state)
{
    enum { N = 300 };
    char repo[32];
    for (int i = 0; i < N; i++) {
        struct urec x = {0};
        snprintf(repo, sizeof(repo), "team/r%d", i);
        fetch(&x, "GET", repo, "manifests/1");
        run();
        assert_int_equal(x.o.result, UPSTREAM_OK);
        urec_clear(&x);
    }
    assert_int_equal(stat_of("token"), N);
    /* the newest scope is still cached: no token request */
    struct urec y = {0};
    fetch(&y, "GET", repo, "manifests/1");
    run();
    assert_int_equal(y.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("token"), N);
    urec_clear(&y);
}

static void test_retry_once_on_401(void **state)
{
    struct urec a = {0}, a2 = {0}, b = {0}, c = {0};
    /* The cached token gets refused the second time: a fresh one is fetched and the request
     * retried with it. */
    fetch(&a, "GET", "revoke/x", "manifests/1");
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("token"), 1);
    fetch(&a2, "GET", "revoke/x", "manifests/1");
    run();
    assert_int_equal(a2.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("token"), 2);
    /* 401 (no token), 200 (tok-1), 401 (tok-1 revoked), 200 (tok-2) */
    assert_int_equal(stat_of("GET /v2/revoke/x/manifests/1"), 4);

    /* A token fresh from the realm refused: final, no second token. */
    fetch(&b, "GET", "deny/x", "manifests/1");
    run();
    assert_int_equal(stat_of("token"), 3);
    assert_int_equal(b.o.result, UPSTREAM_UNAUTHORIZED);
    assert_int_equal(b.o.status, 401);
    assert_int_equal(b.responses, 0);
    assert_non_null(strstr(b.msg, "insufficient_scope"));
    /* The realm is known by now, so the token went up front and the one refusal ends it. */
    assert_int_equal(stat_of("GET /v2/deny/x/manifests/1"), 1);

    /* A cached token refused: exactly one retry with a fresh token, then UNAUTHORIZED. */
    fetch(&c, "GET", "deny/x", "manifests/2");
    run();
    assert_int_equal(c.o.result, UPSTREAM_UNAUTHORIZED);
    assert_int_equal(stat_of("token"), 4);
    assert_int_equal(stat_of("GET /v2/deny/x/manifests/2"), 2);
    urec_clear(&a);
    urec_clear(&a2);
    urec_clear(&b);
    urec_clear(&c);
}

static void test_credentials_at_token_endpoint(void **state)
{
    struct urec a = {0}, b = {0}, c = {0};
    struct upstream *priv = new_upstream("alice", "s3cret");
    fetch_on(priv, &a, "GET", "private/x", "manifests/1", NULL);
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("token_auth"), 1);

    /* Anonymous: the token endpoint says no. */
    fetch(&b, "GET", "private/y", "manifests/1");
    run();
    assert_int_equal(b.o.result, UPSTREAM_UNAUTHORIZED);
    assert_non_null(strstr(b.msg, "anonymous"));

    /* Wrong password. */
    struct upstream *wrong = new_upstream("alice", "nope");
    fetch_on(wrong, &c, "GET", "private/z", "manifests/1", NULL);
    run();
    assert_int_equal(c.o.result, UPSTREAM_UNAUTHORIZED);
    assert_non_null(strstr(c.msg, "credentials"));
    assert_null(strstr(c.msg, "nope"));
    upstream_free(priv);
    upstream_free(wrong);
    urec_clear(&a);
    urec_clear(&b);
    urec_clear(&c);
}

static void test_credentials_only_to_the_upstreams_realm(void **state)
{
    struct urec a = {0}, b = {0};
    /* A realm on another address gets no account: asked anonymously, the fetch works. */
    struct upstream *priv = new_upstream("alice", "s3cret");
    fetch_on(priv, &a, "GET", "foreign/x", "manifests/1", NULL);
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("foreign_token"), 1);
    assert_int_equal(stat_of("foreign_token_auth"), 0);
    /* A realm that redirects: the account went to it (the upstream's own address), but the
     * redirect to another host is not followed. */
    struct upstream *priv2 = new_upstream("alice", "s3cret");
    fetch_on(priv2, &b, "GET", "tokredir/x", "manifests/1", NULL);
    run();
    assert_int_equal(b.o.result, UPSTREAM_UNAVAILABLE);
    assert_non_null(strstr(b.msg, "302"));
    assert_int_equal(stat_of("token_redirect"), 1);
    assert_int_equal(stat_of("token_redirect_auth"), 1);
    assert_int_equal(stat_of("foreign_token"), 1);
    assert_string_equal(upstream_credentials_rule(priv), "the realm named by the upstream's "
                                                         "challenge, if on the address 127.0.0.1 "
                                                         "itself (http or https)");
    assert_string_equal(upstream_credentials_rule(up), "");
    upstream_free(priv);
    upstream_free(priv2);
    urec_clear(&a);
    urec_clear(&b);
}

static void test_basic_challenge(void **state)
{
    struct urec a = {0}, b = {0}, c = {0};
    struct upstream *priv = new_upstream("alice", "s3cret");
    fetch_on(priv, &a, "GET", "basic/x", "manifests/1", NULL);
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("401"), 1);
    /* Basic is sent up front from now on. */
    fetch_on(priv, &b, "GET", "basic/x", "manifests/2", NULL);
    run();
    assert_int_equal(b.o.result, UPSTREAM_OK);
    assert_int_equal(stat_of("401"), 1);

    fetch(&c, "GET", "basic/x", "manifests/1");
    run();
    assert_int_equal(c.o.result, UPSTREAM_UNAUTHORIZED);
    upstream_free(priv);
    urec_clear(&a);
    urec_clear(&b);
    urec_clear(&c);
}

static void test_redirect_to_other_host_drops_authorization(void **state)
{
    struct urec a = {.pattern = true}, b = {.pattern = true};
    fetch(&a, "GET", "cdn/x", BLOB);
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(a.len, 5000);
    assert_int_equal(stat_of("cdn"), 1);
    assert_int_equal(stat_of("cdn_auth"), 0);
    assert_int_equal(stat_of("registry_auth"), 1); /* the token did go to the registry */

    /* A relative redirect stays on the registry and keeps the token. */
    fetch(&b, "GET", "rel/x", BLOB);
    run();
    assert_int_equal(b.o.result, UPSTREAM_OK);
    assert_int_equal(b.len, 1000);
    assert_int_equal(stat_of("GET /v2/open/x/" BLOB), 1);
    assert_int_equal(stat_of("registry_auth"), 3);
    urec_clear(&a);
    urec_clear(&b);
}

static void test_5xx_retried(void **state)
{
    struct urec a = {.pattern = true}, b = {0};
    fetch(&a, "GET", "flaky/x", BLOB);
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(a.len, 1000);
    assert_int_equal(a.responses, 1);
    /* 401, then 503, 503, 200. */
    assert_int_equal(stat_of("GET /v2/flaky/x/" BLOB), 4);

    fetch(&b, "GET", "down/x", BLOB);
    run();
    assert_int_equal(b.o.result, UPSTREAM_UNAVAILABLE);
    assert_int_equal(b.o.status, 503);
    assert_int_equal(b.responses, 0);
    assert_non_null(strstr(b.msg, "503"));
    /* The realm is known by now, so the token went up front: 503 three times. */
    assert_int_equal(stat_of("GET /v2/down/x/" BLOB), 3);
    urec_clear(&a);
    urec_clear(&b);
}

static void test_429_surfaced_with_retry_after(void **state)
{
    struct urec a = {0};
    fetch(&a, "GET", "limited/x", "manifests/1");
    run();
    assert_int_equal(a.o.result, UPSTREAM_TOOMANYREQUESTS);
    assert_int_equal(a.o.status, 429);
    assert_int_equal(a.o.retry_after_s, 42);
    assert_int_equal(a.responses, 0);
    assert_int_equal(stat_of("GET /v2/limited/x/manifests/1"), 2); /* 401, 429: no retry */
    urec_clear(&a);
}

static void test_not_found_and_head(void **state)
{
    struct urec a = {0}, b = {0};
    fetch(&a, "GET", "open/x", "manifests/missing");
    fetch(&b, "HEAD", "open/x", "manifests/latest");
    run();
    assert_int_equal(a.o.result, UPSTREAM_NOT_FOUND);
    assert_int_equal(a.o.status, 404);
    assert_int_equal(a.responses, 0);
    assert_int_equal(b.o.result, UPSTREAM_OK);
    assert_int_equal(b.responses, 1);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.ctype, "application/vnd.oci.image.manifest.v1+json");
    urec_clear(&a);
    urec_clear(&b);
}

static void test_range(void **state)
{
    static const char *const range[] = {"Range: bytes=10-19", NULL};
    struct urec a = {.pattern = true, .offset = 10};
    fetch_on(up, &a, "GET", "open/x", BLOB, range);
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    assert_int_equal(a.status, 206);
    assert_int_equal(a.len, 10);
    urec_clear(&a);
}

static void test_access_token_field(void **state)
{
    struct urec a = {0};
    fetch(&a, "GET", "access/x", "manifests/1");
    run();
    assert_int_equal(a.o.result, UPSTREAM_OK);
    urec_clear(&a);
}

static void test_token_server_down(void **state)
{
    struct urec a = {0};
    fetch(&a, "GET", "deadrealm/x", "manifests/1");
    run();
    assert_int_equal(a.o.result, UPSTREAM_UNAVAILABLE);
    assert_non_null(strstr(a.msg, "token"));
    urec_clear(&a);
}

static void test_connection_refused(void **state)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", ntohs(sa.sin_port));
    struct upstream_config cfg = {.remoteurl = url, .attempts = 2, .retry_delay_ms = 10};
    struct upstream *dead = upstream_new(client, &cfg);
    struct urec a = {0};
    fetch_on(dead, &a, "GET", "x/y", "manifests/1", NULL);
    run();
    assert_int_equal(a.o.result, UPSTREAM_UNAVAILABLE);
    assert_int_equal(a.o.status, 0);
    assert_non_null(strstr(a.msg, "2 attempts"));
    upstream_free(dead);
    urec_clear(&a);
}

static void big_blob(struct urec *x)
{
    x->pattern = true;
    fetch(x, "GET", "open/x", "blobs/big");
    run();
    assert_int_equal(x->o.result, UPSTREAM_OK);
    assert_int_equal(x->len, 1048576);
    urec_clear(x);
}

static void test_pause_resume_big_blob(void **state)
{
    struct urec a = {.pause_in_response = true}, b = {.decline = true},
                c = {.take_and_pause = true};
    big_blob(&a);
    big_blob(&b);
    big_blob(&c);
}

static void test_cancel(void **state)
{
    struct urec w = {0}, a = {.pattern = true, .cancel_after = 100000};
    struct urec b = {0}, c = {0}, d = {0};
    fetch(&w, "GET", "lib/x", "manifests/1"); /* learn the realm */
    run();
    fetch(&a, "GET", "open/x", "blobs/big");
    /* b and c wait for one token fetch (the realm is known); b is cancelled while waiting. */
    fetch(&b, "GET", "wait/x", "manifests/1");
    fetch(&c, "GET", "wait/x", "manifests/1");
    upstream_cancel(b.req);
    outstanding--;
    /* d is cancelled before its request went out. */
    fetch(&d, "GET", "open/x", "manifests/1");
    upstream_cancel(d.req);
    outstanding--;
    run();
    assert_int_equal(a.done, 0);
    assert_true(a.len >= 100000 && a.len < 1048576);
    assert_int_equal(b.done, 0);
    assert_int_equal(d.done, 0);
    assert_int_equal(c.done, 1);
    assert_int_equal(c.o.result, UPSTREAM_OK);
    /* lib/x, open/x (tokens go up front once the realm is known) and one for wait/x. */
    assert_int_equal(stat_of("token"), 3);
    urec_clear(&w);
    urec_clear(&a);
    urec_clear(&b);
    urec_clear(&c);
    urec_clear(&d);
}

static void test_free_with_running_requests(void **state)
{
    struct urec w = {0}, a = {0}, b = {.pattern = true, .pause_forever = true};
    fetch(&w, "GET", "lib/x", "manifests/1"); /* learn the realm */
    run();
    fetch(&b, "GET", "open/x", "blobs/big");
    run_for(100);
    assert_int_equal(b.responses, 1);             /* paused, holding a connection */
    fetch(&a, "GET", "pending/x", "manifests/1"); /* waits for its token fetch */
    /* The teardown frees the upstream with both in flight: no callback, no leak. */
    assert_int_equal(a.done, 0);
    assert_int_equal(b.done, 0);
    urec_clear(&w);
    urec_clear(&a);
    urec_clear(&b);
}

static void test_bad_arguments(void **state)
{
    struct urec a = {0};
    assert_null(upstream_fetch(up, "POST", "a/b", "manifests/1", NULL, &ucb, &a));
    assert_null(upstream_fetch(up, "GET", "a/b c", "manifests/1", NULL, &ucb, &a));
    assert_null(upstream_fetch(up, "GET", "", "manifests/1", NULL, &ucb, &a));
    assert_null(upstream_fetch(up, "GET", "a/b", "manifests/1?x", NULL, &ucb, &a));
    assert_null(upstream_fetch(up, "GET", "a/b", "manifests/a b", NULL, &ucb, &a));
    static const char *const evil[] = {"Accept: a\r\nX-Evil: 1", NULL};
    assert_null(upstream_fetch(up, "GET", "a/b", "manifests/1", evil, &ucb, &a));
}

static void test_docker_hub_naming(void **state)
{
    char buf[UPSTREAM_NAME_MAX];
    struct upstream_config hub = {0};
    struct upstream *h = upstream_new(client, &hub);
    assert_non_null(h);
    assert_true(upstream_is_docker_hub(h));
    assert_int_equal(upstream_repo_name(h, "alpine", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "library/alpine");
    assert_int_equal(upstream_repo_name(h, "library/alpine", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "library/alpine");
    assert_int_equal(upstream_repo_name(h, "user/app", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "user/app");
    assert_int_equal(upstream_repo_name(h, "alpine", buf, 12), -1);
    assert_string_equal(buf, "");
    upstream_free(h);

    static const char *const hubs[] = {"https://docker.io", "https://INDEX.docker.io/",
                                       "https://registry-1.docker.io:443"};
    for (size_t i = 0; i < 3; i++) {
        struct upstream_config cfg = {.remoteurl = hubs[i]};
        h = upstream_new(client, &cfg);
        assert_non_null(h);
        assert_true(upstream_is_docker_hub(h));
        upstream_free(h);
    }

    assert_false(upstream_is_docker_hub(up));
    assert_int_equal(upstream_repo_name(up, "alpine", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "alpine");

    static const char *const bad[] = {"ftp://registry.example.com", "registry.example.com",
                                      "https://user:pass@registry.example.com"};
    for (size_t i = 0; i < 3; i++) {
        struct upstream_config cfg = {.remoteurl = bad[i]};
        assert_null(upstream_new(client, &cfg));
    }
}

static void test_result_names(void **state)
{
    assert_string_equal(upstream_result_name(UPSTREAM_OK), "ok");
    assert_string_equal(upstream_result_name(UPSTREAM_TOOMANYREQUESTS), "toomanyrequests");
    assert_string_equal(upstream_result_name((enum upstream_result)99), "unknown");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_ERROR, LOG_FORMAT_TEXT);
    const struct CMUnitTest tests[] = {
        T(test_token_flow),
        T(test_concurrent_requests_share_one_token),
        T(test_expired_token_refetched),
        T(test_token_cache_full),
        T(test_retry_once_on_401),
        T(test_credentials_at_token_endpoint),
        T(test_basic_challenge),
        T(test_redirect_to_other_host_drops_authorization),
        T(test_credentials_only_to_the_upstreams_realm),
        T(test_5xx_retried),
        T(test_429_surfaced_with_retry_after),
        T(test_not_found_and_head),
        T(test_range),
        T(test_access_token_field),
        T(test_token_server_down),
        T(test_connection_refused),
        T(test_pause_resume_big_blob),
        T(test_cancel),
        T(test_free_with_running_requests),
        T(test_bad_arguments),
        T(test_docker_hub_naming),
        T(test_result_names),
    };
    return cmocka_run_group_tests(tests, peer_start, peer_stop);
}
