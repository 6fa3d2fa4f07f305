/*
 * redis_sentinel: asks Redis Sentinel where the master is (see redis_sentinel.h).
 */
#include "redis_sentinel.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "log.h"

#define DEFAULT_TIMEOUT_MS 500

struct sentinel_addr {
    char host[REDIS_SENTINEL_HOST_MAX];
    int port;
};

struct redis_sentinel {
    struct event_base *base;
    char *mastername, *username, *password;
    int64_t timeout_ms;
    struct sentinel_addr *addrs;
    size_t naddrs;
};

/* One sentinel asked by one ask; ac->data points here until the probe is closed. */
struct probe {
    struct redis_sentinel_ask *q;
    redisAsyncContext *ac;
};

struct redis_sentinel_ask {
    struct redis_sentinel *s;
    redis_sentinel_cb cb;
    void *ctx;
    struct event *timer;
    struct probe *probes;
    size_t open; /* probes still waiting for their sentinel */
};

/* ---- parsing ---- */

void redis_sentinel_config_from(struct redis_sentinel_config *out, const struct config *cfg)
{
    memset(out, 0, sizeof(*out));
    out->mastername = cfg->redis.sentinel.mastername;
    out->addrs = cfg->redis.sentinel.addrs;
    out->naddrs = cfg->redis.sentinel.naddrs;
    out->username = cfg->redis.sentinel.username;
    out->password = cfg->redis.sentinel.password;
    out->timeout_ms = cfg->redis.dialtimeout_ms;
}

bool redis_sentinel_split_addr(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *colon, *h = addr;
    size_t n;
    char *end;
    long p;

    if (!addr || !addr[0])
        return false;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':')
            return false;
        h = addr + 1;
        n = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return false;
        n = (size_t)(colon - addr);
    }
    if (n == 0 || n >= hostlen || memchr(h, ' ', n))
        return false;
    p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || colon[1] == '-' || colon[1] == '+' || p < 1 || p > 65535)
        return false;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (int)p;
    return true;
}

enum redis_sentinel_answer redis_sentinel_parse_master(const redisReply *r, char *host,
                                                       size_t hostlen, int *port)
{
    char *end;
    long p;

    if (!r)
        return REDIS_SENTINEL_BAD;
    if (r->type == REDIS_REPLY_NIL)
        return REDIS_SENTINEL_UNKNOWN;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !r->element[0] || !r->element[1])
        return REDIS_SENTINEL_BAD;
    const redisReply *h = r->element[0], *pr = r->element[1];
    if (h->type != REDIS_REPLY_STRING || pr->type != REDIS_REPLY_STRING)
        return REDIS_SENTINEL_BAD;
    /* a host is printable and has no NUL, space or control byte in it */
    if (h->len == 0 || h->len >= hostlen || pr->len == 0 || pr->len > 5)
        return REDIS_SENTINEL_BAD;
    for (size_t i = 0; i < h->len; i++)
        if ((unsigned char)h->str[i] <= ' ' || (unsigned char)h->str[i] >= 0x7f)
            return REDIS_SENTINEL_BAD;
    for (size_t i = 0; i < pr->len; i++)
        if (pr->str[i] < '0' || pr->str[i] > '9')
            return REDIS_SENTINEL_BAD;
    p = strtol(pr->str, &end, 10);
    if (p < 1 || p > 65535)
        return REDIS_SENTINEL_BAD;
    memcpy(host, h->str, h->len);
    host[h->len] = '\0';
    *port = (int)p;
    return REDIS_SENTINEL_MASTER;
}

bool redis_sentinel_role_is_master(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0] &&
           r->element[0]->type == REDIS_REPLY_STRING && r->element[0]->len == 6 &&
           memcmp(r->element[0]->str, "master", 6) == 0;
}

bool redis_sentinel_stale_error(const char *msg, size_t len)
{
    static const char *const words[] = {"READONLY", "LOADING", "MASTERDOWN"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        size_t n = strlen(words[i]);
        if (msg && len >= n && strncasecmp(msg, words[i], n) == 0 && (len == n || msg[n] == ' '))
            return true;
    }
    return false;
}

/* ---- the sentinel set ---- */

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

struct redis_sentinel *redis_sentinel_new(struct event_base *base,
                                          const struct redis_sentinel_config *cfg)
{
    if (!cfg->mastername || !cfg->mastername[0])
        return NULL;
    struct redis_sentinel *s = calloc(1, sizeof(*s));
    if (!s) {
        log_error("redis sentinel: out of memory");
        return NULL;
    }
    s->base = base;
    s->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    s->mastername = strdup(cfg->mastername);
    s->username = dup_or_empty(cfg->username);
    s->password = dup_or_empty(cfg->password);
    s->addrs = cfg->naddrs ? calloc(cfg->naddrs, sizeof(*s->addrs)) : NULL;
    if (!s->mastername || !s->username || !s->password || !s->addrs) {
        log_error(cfg->naddrs ? "redis sentinel: out of memory"
                              : "redis sentinel: no sentinel addresses");
        redis_sentinel_free(s);
        return NULL;
    }
    for (size_t i = 0; i < cfg->naddrs; i++) {
        struct sentinel_addr *a = &s->addrs[i];
        if (!redis_sentinel_split_addr(cfg->addrs[i], a->host, sizeof(a->host), &a->port)) {
            log_error("redis sentinel: expected \"host:port\", got \"%s\"", cfg->addrs[i]);
            redis_sentinel_free(s);
            return NULL;
        }
        s->naddrs++;
    }
    return s;
}

void redis_sentinel_free(struct redis_sentinel *s)
{
    if (!s)
        return;
    free(s->mastername);
    free(s->username);
    free(s->password);
    free(s->addrs);
    free(s);
}

const char *redis_sentinel_mastername(const struct redis_sentinel *s)
{
    return s->mastername;
}

/* ---- the async ask ---- */

/* Detaches the probe; its pending callbacks then see ac->data NULL and do nothing. Inside
 * one of its callbacks hiredis frees the context when that returns. */
static void probe_close(struct probe *p)
{
    redisAsyncContext *ac = p->ac;
    p->ac = NULL;
    if (!ac)
        return;
    ac->data = NULL;
    if (!(ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        redisAsyncFree(ac);
}

static void ask_free(struct redis_sentinel_ask *q)
{
    for (size_t i = 0; i < q->s->naddrs; i++)
        probe_close(&q->probes[i]);
    if (q->timer)
        event_free(q->timer);
    free(q->probes);
    free(q);
}

static void ask_finish(struct redis_sentinel_ask *q, const char *host, int port)
{
    char h[REDIS_SENTINEL_HOST_MAX];
    redis_sentinel_cb cb = q->cb;
    void *ctx = q->ctx;
    if (host)
        snprintf(h, sizeof(h), "%s", host);
    ask_free(q);
    cb(ctx, host ? h : NULL, port);
}

static void probe_failed(struct probe *p)
{
    struct redis_sentinel_ask *q = p->q;
    probe_close(p);
    if (--q->open == 0)
        ask_finish(q, NULL, 0);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    ask_finish(arg, NULL, 0);
}

static void on_probe_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct probe *p = ac->data;
    if (!p || status == REDIS_OK)
        return;
    /* hiredis frees the context after this returns */
    ac->data = NULL;
    p->ac = NULL;
    probe_failed(p);
}

static void on_probe_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct probe *p = ac->data;
    if (!p)
        return;
    ac->data = NULL;
    p->ac = NULL;
    probe_failed(p);
}

static void on_master(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct probe *p = ac->data;
    char host[REDIS_SENTINEL_HOST_MAX];
    int port = 0;
    if (!p)
        return;
    if (redis_sentinel_parse_master(reply, host, sizeof(host), &port) == REDIS_SENTINEL_MASTER)
        ask_finish(p->q, host, port);
    else
        probe_failed(p);
}

static bool probe_start(struct redis_sentinel_ask *q, struct probe *p,
                        const struct sentinel_addr *a)
{
    struct redis_sentinel *s = q->s;
    redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);
    p->q = q;
    if (!ac)
        return false;
    if (ac->err || redisLibeventAttach(ac, s->base) != REDIS_OK) {
        redisAsyncFree(ac);
        return false;
    }
    ac->data = p;
    p->ac = ac;
    redisAsyncSetConnectCallback(ac, on_probe_connect);
    redisAsyncSetDisconnectCallback(ac, on_probe_disconnect);
    /* queued until connected; a refused AUTH makes the question fail as well */
    if (s->password[0] && s->username[0]) {
        const char *argv[] = {"AUTH", s->username, s->password};
        redisAsyncCommandArgv(ac, NULL, NULL, 3, argv, NULL);
    } else if (s->password[0]) {
        const char *argv[] = {"AUTH", s->password};
        redisAsyncCommandArgv(ac, NULL, NULL, 2, argv, NULL);
    }
    const char *argv[] = {"SENTINEL", "get-master-addr-by-name", s->mastername};
    return redisAsyncCommandArgv(ac, on_master, NULL, 3, argv, NULL) == REDIS_OK;
}

struct redis_sentinel_ask *redis_sentinel_ask(struct redis_sentinel *s, redis_sentinel_cb cb,
                                              void *ctx)
{
    struct redis_sentinel_ask *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->s = s;
    q->cb = cb;
    q->ctx = ctx;
    q->probes = calloc(s->naddrs, sizeof(*q->probes));
    q->timer = evtimer_new(s->base, on_timeout, q);
    if (!q->probes || !q->timer) {
        ask_free(q);
        return NULL;
    }
    for (size_t i = 0; i < s->naddrs; i++) {
        if (probe_start(q, &q->probes[i], &s->addrs[i]))
            q->open++;
        else
            probe_close(&q->probes[i]);
    }
    /* nothing to wait for: the answer still comes from the loop */
    struct timeval tv = {0, 0};
    if (q->open) {
        tv.tv_sec = (time_t)(s->timeout_ms / 1000);
        tv.tv_usec = (suseconds_t)(s->timeout_ms % 1000) * 1000;
    }
    evtimer_add(q->timer, &tv);
    return q;
}

void redis_sentinel_cancel(struct redis_sentinel_ask *q)
{
    if (q)
        ask_free(q);
}

/* ---- the blocking ask ---- */

static bool sync_ok(redisReply *r)
{
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    freeReplyObject(r);
    return ok;
}

bool redis_sentinel_ask_sync(const struct redis_sentinel *s, char *host, size_t hostlen, int *port)
{
    struct timeval tv = {(time_t)(s->timeout_ms / 1000),
                         (suseconds_t)(s->timeout_ms % 1000) * 1000};
    for (size_t i = 0; i < s->naddrs; i++) {
        redisContext *rc = redisConnectWithTimeout(s->addrs[i].host, s->addrs[i].port, tv);
        bool ok = rc && !rc->err && redisSetTimeout(rc, tv) == REDIS_OK;
        if (ok && s->password[0] && s->username[0]) {
            const char *argv[] = {"AUTH", s->username, s->password};
            ok = sync_ok(redisCommandArgv(rc, 3, argv, NULL));
        } else if (ok && s->password[0]) {
            const char *argv[] = {"AUTH", s->password};
            ok = sync_ok(redisCommandArgv(rc, 2, argv, NULL));
        }
        if (ok) {
            const char *argv[] = {"SENTINEL", "get-master-addr-by-name", s->mastername};
            redisReply *r = redisCommandArgv(rc, 3, argv, NULL);
            ok = redis_sentinel_parse_master(r, host, hostlen, port) == REDIS_SENTINEL_MASTER;
            freeReplyObject(r);
        }
        if (rc)
            redisFree(rc);
        if (ok)
            return true;
    }
    return false;
}
