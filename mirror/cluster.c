/*
 * Fetch leases in Redis (see cluster.h): one hiredis connection on the loop, reconnected
 * after a pause when it drops; each question has its own deadline, since hiredis 0.14 has
 * none for async commands.
 */
#include "cluster.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "redis_sentinel.h"

#define LEASE_TTL_MS 6000
#define RENEW_EVERY_MS 2000
/* How long "stored" stays: longer than a lookup that began before the blob was stored. */
#define STORED_TTL_MS 30000
/* A question Redis has not answered by then is answered CLUSTER_ALONE. */
#define ANSWER_MS 500
#define RECONNECT_MS 1000
#define TOKEN_LIFETIME_S 300
/* regmirror:lease:<digest>, or regmirror:tagcheck:<name>:<tag> */
#define KEY_MAX 512
/* A tag checked a moment ago: nodes that waited on the check answer from the store. */
#define CHECKED_TTL_MS 1000
#define MAX_HELD 4096
/* Another node's fetch announced within this long counts as in use (it re-announces with
 * every renewal, and once more when it stores the blob). */
#define BUSY_S 10
#define BUSY_SLOTS 4096
#define CHANNEL "regmirror:events"
#define LEADER_KEY "regmirror:evict-leader"

/* The lease is free: take it (nil), else who has it (the value). */
static const char TAKE[] = "local v = redis.call('GET', KEYS[1]) "
                           "if v then return v end "
                           "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return false";
static const char RENEW[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                            "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
/* ARGV[3] "stored": leave the word for a while; else free the key. */
/* The eviction leader keeps its key; a node takes it when it is free. */
static const char LEAD[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                           "redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end "
                           "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then "
                           "return 1 end return 0";
static const char DROP[] = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
                           "if ARGV[3] == 'stored' then "
                           "redis.call('SET', KEYS[1], 'stored', 'PX', ARGV[2]) "
                           "else redis.call('DEL', KEYS[1]) end return 1";

/* A lease this node holds: a blob's (announced as busy while held) or a tag check's. */
struct held {
    char key[KEY_MAX];
    bool blob;
    struct digest d;
};

/* One hiredis connection: commands, or the events channel (subscribed). */
struct link {
    struct cluster *c;
    bool sub;
    redisAsyncContext *ac;
    bool connected;
    struct event *reconnect;
    struct redis_sentinel_ask *ask; /* asking the sentinels where the master is */
};

struct cluster {
    struct event_base *base;
    char host[256]; /* with a sentinel: the master it last named (the loop's copy) */
    int port;
    struct redis_sentinel *sentinel; /* NULL: host and port are redis.addr */
    char *username, *password;
    int db;
    char value[512]; /* "<advertise> <nonce>": what our leases hold */
    struct link cmd, events;
    bool closing;
    bool leader; /* this node runs eviction for the cluster (cluster_evicts) */
    struct event *renew;
    struct held *held;
    size_t nheld, held_cap;
    /* Digests other nodes announced as in use, lossy (a collision forgets the older one). */
    struct {
        struct digest d;
        time_t seen;
    } busy[BUSY_SLOTS];
    /* What this node announced last, per slot (cluster_announce_busy). */
    struct {
        struct digest d;
        time_t at;
    } announced[BUSY_SLOTS];
    void (*on_tags)(void *ctx);
    void *tags_ctx;
    /* cluster_announce_tags, from any thread */
    pthread_mutex_t sync_mu;
    redisContext *sync;
    time_t sync_tried;
};

struct cluster_op {
    struct cluster *c;
    struct held what;
    cluster_lease_cb cb;
    void *ctx;
    struct event *timer;
    bool in_redis; /* hiredis holds op until its reply (or the disconnect) comes */
    bool answered; /* cb ran, or the owner cancelled */
};

static struct held blob_lease(const struct digest *d)
{
    struct held h = {.blob = true, .d = *d};
    char ds[DIGEST_STR_MAX];
    snprintf(h.key, sizeof(h.key), "regmirror:lease:%s", digest_str(d, ds));
    return h;
}

static struct held tag_lease(const char *name, const char *tag)
{
    struct held h = {.blob = false};
    snprintf(h.key, sizeof(h.key), "regmirror:tagcheck:%s:%s", name, tag);
    return h;
}

static void link_connect(struct link *l);

static void on_reconnect(evutil_socket_t fd, short what, void *arg)
{
    link_connect(arg);
}

static void connection_lost(struct link *l, const char *why)
{
    struct cluster *c = l->c;
    if (!l->sub && (l->connected || !l->ac))
        log_warn("cluster: redis %s:%d: %s; fetching without leases until it is back", c->host,
                 c->port, why);
    l->ac = NULL;
    l->connected = false;
    if (!l->sub)
        c->leader = false;
    if (!c->closing) {
        struct timeval tv = {RECONNECT_MS / 1000, (RECONNECT_MS % 1000) * 1000};
        evtimer_add(l->reconnect, &tv);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;
    if (!l)
        return;
    if (status != REDIS_OK) {
        connection_lost(l, ac->errstr[0] ? ac->errstr : "cannot connect");
        return;
    }
    if (!l->connected && !l->sub)
        log_info("cluster: redis %s:%d connected", l->c->host, l->c->port);
    l->connected = true;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;
    if (l)
        connection_lost(l, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void on_event(redisAsyncContext *ac, void *r, void *privdata);

/* With a sentinel, a server that is not (or no longer) the master is dropped: the link
 * reconnects and asks the sentinels again. */
static void on_role(redisAsyncContext *ac, void *r, void *privdata)
{
    struct link *l = ac->data;
    const redisReply *reply = r;
    /* an error (ROLE not allowed, say) proves nothing: the writes will tell */
    if (!l || !reply || reply->type != REDIS_REPLY_ARRAY || redis_sentinel_role_is_master(reply))
        return;
    log_warn("cluster: redis %s:%d is not the master; asking the sentinels again", l->c->host,
             l->c->port);
    redisAsyncFree(ac); /* after this callback; on_disconnect then schedules the reconnect */
}

/* Whether reply says the server was demoted (READONLY, LOADING, MASTERDOWN); then the link
 * is dropped as in on_role. */
static bool link_stale(redisAsyncContext *ac, const redisReply *reply)
{
    struct link *l = ac->data;
    if (!l || !l->c->sentinel || !reply || reply->type != REDIS_REPLY_ERROR ||
        !redis_sentinel_stale_error(reply->str, reply->len))
        return false;
    log_warn("cluster: redis %s:%d: %s; asking the sentinels again", l->c->host, l->c->port,
             reply->str);
    redisAsyncFree(ac);
    return true;
}

static void link_dial(struct link *l, const char *host, int port)
{
    struct cluster *c = l->c;
    redisAsyncContext *ac = redisAsyncConnect(host, port);
    if (!ac || ac->err || redisLibeventAttach(ac, c->base) != REDIS_OK) {
        char why[160];
        snprintf(why, sizeof(why), "%s", ac && ac->err ? ac->errstr : "cannot connect");
        if (ac)
            redisAsyncFree(ac);
        connection_lost(l, why);
        return;
    }
    ac->data = l;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    l->ac = ac;
    /* Queued until the connection is up; a failure shows as failed commands. */
    if (c->password[0] && c->username[0])
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s %s", c->username, c->password);
    else if (c->password[0])
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", c->password);
    if (c->db && !l->sub)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", c->db);
    if (c->sentinel)
        redisAsyncCommand(ac, on_role, NULL, "ROLE");
    if (l->sub)
        redisAsyncCommand(ac, on_event, c, "SUBSCRIBE %s", CHANNEL);
}

static void on_master(void *ctx, const char *host, int port)
{
    struct link *l = ctx;
    struct cluster *c = l->c;
    l->ask = NULL;
    if (!host) {
        connection_lost(l, "no sentinel named the master");
        return;
    }
    if (strcmp(c->host, host) != 0 || c->port != port) {
        log_info("cluster: the sentinels name %s:%d the master of %s", host, port,
                 redis_sentinel_mastername(c->sentinel));
        snprintf(c->host, sizeof(c->host), "%s", host);
        c->port = port;
    }
    link_dial(l, c->host, c->port);
}

static void link_connect(struct link *l)
{
    struct cluster *c = l->c;
    if (!c->sentinel) {
        link_dial(l, c->host, c->port);
        return;
    }
    l->ask = redis_sentinel_ask(c->sentinel, on_master, l);
    if (!l->ask)
        connection_lost(l, "out of memory");
}

/* Sends a script; fn gets privdata back. false: not connected or hiredis refused. */
static bool eval(struct cluster *c, redisCallbackFn *fn, void *privdata, const char *script,
                 const char *key, const char *arg1, int64_t ms, const char *arg3)
{
    if (!c->cmd.ac)
        return false; /* hiredis queues what is sent while it connects */
    char msbuf[24];
    snprintf(msbuf, sizeof(msbuf), "%" PRId64, ms);
    const char *argv[] = {"EVAL", script, "1", key, arg1, msbuf, arg3};
    int argc = arg3 ? 7 : 6;
    return redisAsyncCommandArgv(c->cmd.ac, fn, privdata, argc, argv, NULL) == REDIS_OK;
}

/* ---- held leases, renewed while their fetch runs ---- */

static void on_renewed(redisAsyncContext *ac, void *r, void *privdata)
{
    const redisReply *reply = r;
    if (ac->data && reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0)
        log_warn("cluster: a fetch lease was lost (expired while Redis was away); another node "
                 "may fetch the same blob");
}

static size_t busy_slot(const struct digest *d);

/* Tells the other nodes that d is in use here (a fetch they must not evict under). */
static void announce_busy(struct cluster *c, const struct digest *d)
{
    char ds[DIGEST_STR_MAX];
    if (c->cmd.ac)
        redisAsyncCommand(c->cmd.ac, NULL, NULL, "PUBLISH %s busy:%s", CHANNEL, digest_str(d, ds));
}

void cluster_announce_busy(struct cluster *c, const struct digest *d)
{
    if (!c)
        return;
    /* At most once per half the window per digest: a busy blob costs one message in 5 s. */
    size_t k = busy_slot(d);
    time_t now = time(NULL);
    if (c->announced[k].at && now - c->announced[k].at < BUSY_S / 2 &&
        digest_equal(&c->announced[k].d, d))
        return;
    c->announced[k].d = *d;
    c->announced[k].at = now;
    announce_busy(c, d);
}

static void on_led(redisAsyncContext *ac, void *r, void *privdata)
{
    const redisReply *reply = r;
    struct link *l = ac->data;
    if (!l || link_stale(ac, reply))
        return;
    bool lead = reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
    if (lead != l->c->leader)
        log_info("cluster: this node %s the eviction for the cluster", lead ? "runs" : "leaves");
    l->c->leader = lead;
}

static void on_renew(evutil_socket_t fd, short what, void *arg)
{
    struct cluster *c = arg;
    for (size_t i = 0; i < c->nheld; i++) {
        eval(c, on_renewed, NULL, RENEW, c->held[i].key, c->value, LEASE_TTL_MS, NULL);
        if (c->held[i].blob)
            announce_busy(c, &c->held[i].d);
    }
    if (c->cmd.ac) {
        const char *argv[] = {"EVAL", LEAD, "1", LEADER_KEY, c->value, "6000"};
        redisAsyncCommandArgv(c->cmd.ac, on_led, NULL, 6, argv, NULL);
    }
    struct timeval tv = {RENEW_EVERY_MS / 1000, (RENEW_EVERY_MS % 1000) * 1000};
    evtimer_add(c->renew, &tv);
}

static void held_add(struct cluster *c, const struct held *h)
{
    /* Past the cap (or out of memory) the lease goes unrenewed and expires: at worst a
     * second fetch of that blob. */
    if (buf_grow_items(&c->held, &c->held_cap, c->nheld + 1, sizeof(*c->held), MAX_HELD) != BUF_OK)
        return;
    c->held[c->nheld++] = *h;
}

static bool held_remove(struct cluster *c, const char *key)
{
    for (size_t i = 0; i < c->nheld; i++) {
        if (strcmp(c->held[i].key, key) == 0) {
            c->held[i] = c->held[--c->nheld];
            return true;
        }
    }
    return false;
}

/* ---- questions ---- */

static void op_answer(struct cluster_op *op, enum cluster_lease r, const char *holder)
{
    if (op->answered)
        return;
    op->answered = true;
    evtimer_del(op->timer);
    if (r == CLUSTER_OURS) {
        held_add(op->c, &op->what);
        if (op->what.blob)
            announce_busy(op->c, &op->what.d);
        metrics_inc(METRICS_CLUSTER_LEASES_TAKEN);
    }
    op->cb(op->ctx, r, holder);
}

static void op_free(struct cluster_op *op)
{
    event_free(op->timer);
    free(op);
}

static void on_taken(redisAsyncContext *ac, void *r, void *privdata)
{
    const redisReply *reply = r;
    struct cluster_op *op = privdata;
    op->in_redis = false;
    if (op->c->closing || op->answered) {
        /* Answered (ALONE) at its deadline: a lease taken since then expires unrenewed. */
        op_free(op);
        return;
    }
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        op_answer(op, CLUSTER_ALONE, NULL);
    } else if (reply->type == REDIS_REPLY_NIL) {
        op_answer(op, CLUSTER_OURS, NULL);
    } else if (reply->type == REDIS_REPLY_STRING && strcmp(reply->str, "stored") == 0) {
        op_answer(op, CLUSTER_STORED, NULL);
    } else if (reply->type == REDIS_REPLY_STRING) {
        char holder[512];
        snprintf(holder, sizeof(holder), "%s", reply->str);
        char *sp = strchr(holder, ' ');
        if (sp)
            *sp = '\0';
        op_answer(op, CLUSTER_HELD, holder);
    } else {
        op_answer(op, CLUSTER_ALONE, NULL);
    }
    op_free(op);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct cluster_op *op = arg;
    op_answer(op, CLUSTER_ALONE, NULL);
    if (!op->in_redis)
        op_free(op);
}

static struct cluster_op *lease_take(struct cluster *c, const struct held *what,
                                     cluster_lease_cb cb, void *ctx)
{
    struct cluster_op *op = calloc(1, sizeof(*op));
    if (!op)
        return NULL;
    op->c = c;
    op->what = *what;
    op->cb = cb;
    op->ctx = ctx;
    op->timer = evtimer_new(c->base, on_deadline, op);
    if (!op->timer) {
        free(op);
        return NULL;
    }
    op->in_redis = eval(c, on_taken, op, TAKE, what->key, c->value, LEASE_TTL_MS, NULL);
    struct timeval tv = {0, op->in_redis ? ANSWER_MS * 1000 : 0};
    evtimer_add(op->timer, &tv);
    return op;
}

struct cluster_op *cluster_lease_take(struct cluster *c, const struct digest *d,
                                      cluster_lease_cb cb, void *ctx)
{
    struct held h = blob_lease(d);
    return lease_take(c, &h, cb, ctx);
}

struct cluster_op *cluster_tag_take(struct cluster *c, const char *name, const char *tag,
                                    cluster_lease_cb cb, void *ctx)
{
    struct held h = tag_lease(name, tag);
    return lease_take(c, &h, cb, ctx);
}

void cluster_op_cancel(struct cluster_op *op)
{
    if (!op)
        return;
    op->answered = true;
    evtimer_del(op->timer);
    if (!op->in_redis)
        op_free(op);
}

void cluster_lease_drop(struct cluster *c, const struct digest *d, bool stored)
{
    struct held h = blob_lease(d);
    if (!c || !held_remove(c, h.key))
        return;
    eval(c, NULL, NULL, DROP, h.key, c->value, STORED_TTL_MS, stored ? "stored" : "free");
    announce_busy(c, d); /* a node about to evict it waits a little longer */
}

void cluster_tag_drop(struct cluster *c, const char *name, const char *tag, bool checked)
{
    struct held h = tag_lease(name, tag);
    if (!c || !held_remove(c, h.key))
        return;
    eval(c, NULL, NULL, DROP, h.key, c->value, CHECKED_TTL_MS, checked ? "stored" : "free");
}

/* ---- what the other nodes say ---- */

static size_t busy_slot(const struct digest *d)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = d->hex; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return (size_t)(h % BUSY_SLOTS);
}

static void on_event(redisAsyncContext *ac, void *r, void *privdata)
{
    const redisReply *reply = r;
    struct cluster *c = privdata;
    if (!reply || !ac->data || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    const char *msg = reply->element[2]->str;
    struct digest d;
    if (strcmp(msg, "tags") == 0) {
        if (c->on_tags)
            c->on_tags(c->tags_ctx);
    } else if (strncmp(msg, "busy:", 5) == 0 && digest_parse(msg + 5, strlen(msg + 5), &d) == 0) {
        size_t k = busy_slot(&d);
        c->busy[k].d = d;
        c->busy[k].seen = time(NULL);
    }
}

bool cluster_busy(const struct cluster *c, const struct digest *d)
{
    if (!c)
        return false;
    size_t k = busy_slot(d);
    return c->busy[k].seen && time(NULL) - c->busy[k].seen < BUSY_S &&
           digest_equal(&c->busy[k].d, d);
}

bool cluster_evicts(const struct cluster *c)
{
    return !c || c->leader;
}

void cluster_on_tags(struct cluster *c, void (*fn)(void *ctx), void *ctx)
{
    c->on_tags = fn;
    c->tags_ctx = ctx;
}

static bool sync_ok(void *reply)
{
    const redisReply *r = reply;
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    freeReplyObject(reply);
    return ok;
}

/* From any thread: with a sentinel it asks for the master itself (c->host is the loop's). */
static redisContext *sync_connect(const struct cluster *c)
{
    struct timeval tv = {0, ANSWER_MS * 1000};
    char host[REDIS_SENTINEL_HOST_MAX];
    int port = c->port;
    snprintf(host, sizeof(host), "%s", c->host);
    if (c->sentinel && !redis_sentinel_ask_sync(c->sentinel, host, sizeof(host), &port))
        return NULL;
    redisContext *rc = redisConnectWithTimeout(host, port, tv);
    bool ok = rc && !rc->err && redisSetTimeout(rc, tv) == REDIS_OK;
    if (ok && c->password[0] && c->username[0])
        ok = sync_ok(redisCommand(rc, "AUTH %s %s", c->username, c->password));
    else if (ok && c->password[0])
        ok = sync_ok(redisCommand(rc, "AUTH %s", c->password));
    if (ok && c->sentinel) {
        redisReply *role = redisCommand(rc, "ROLE");
        ok = role && (role->type != REDIS_REPLY_ARRAY || redis_sentinel_role_is_master(role));
        freeReplyObject(role);
    }
    if (!ok && rc) {
        redisFree(rc);
        rc = NULL;
    }
    return rc;
}

/* A connection of its own, blocking and short: the announcement is out before the push is
 * answered, and it comes from storage work (a worker, or the loop on a filesystem). */
void cluster_announce_tags(struct cluster *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->sync_mu);
    time_t now = time(NULL);
    if (!c->sync && now != c->sync_tried) {
        c->sync_tried = now; /* Redis away: one try a second, not one per push */
        c->sync = sync_connect(c);
    }
    if (c->sync && !sync_ok(redisCommand(c->sync, "PUBLISH %s tags", CHANNEL))) {
        log_warn("cluster: cannot tell the other nodes that a tag changed: %s",
                 c->sync->errstr[0] ? c->sync->errstr : "no answer");
        redisFree(c->sync);
        c->sync = NULL;
    }
    pthread_mutex_unlock(&c->sync_mu);
}

/* ---- life cycle ---- */

struct cluster *cluster_new(struct event_base *base, const struct config *cfg)
{
    if (!cfg->cluster.advertise[0])
        return NULL;
    struct cluster *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->base = base;
    pthread_mutex_init(&c->sync_mu, NULL);
    c->username = cfg->redis.username;
    c->password = cfg->redis.password;
    c->db = cfg->redis.db;
    unsigned char nonce[8];
    struct redis_sentinel_config sc;
    redis_sentinel_config_from(&sc, cfg);
    if (sc.timeout_ms <= 0 || sc.timeout_ms > ANSWER_MS)
        sc.timeout_ms = ANSWER_MS;
    if (sc.mastername[0]) {
        c->sentinel = redis_sentinel_new(base, &sc);
        snprintf(c->host, sizeof(c->host), "%s", sc.mastername); /* until the sentinels answer */
    }
    if ((sc.mastername[0]
             ? !c->sentinel
             : !redis_sentinel_split_addr(cfg->redis.addr, c->host, sizeof(c->host), &c->port)) ||
        RAND_bytes(nonce, sizeof(nonce)) != 1) {
        log_error("cluster: cannot use redis.addr %s", cfg->redis.addr);
        cluster_free(c);
        return NULL;
    }
    int n = snprintf(c->value, sizeof(c->value), "%s ", cfg->cluster.advertise);
    for (size_t i = 0; i < sizeof(nonce) && n > 0 && (size_t)n + 3 < sizeof(c->value); i++)
        n += snprintf(c->value + n, sizeof(c->value) - (size_t)n, "%02x", nonce[i]);
    c->cmd = (struct link){.c = c, .sub = false};
    c->events = (struct link){.c = c, .sub = true};
    c->cmd.reconnect = evtimer_new(base, on_reconnect, &c->cmd);
    c->events.reconnect = evtimer_new(base, on_reconnect, &c->events);
    c->renew = evtimer_new(base, on_renew, c);
    if (!c->cmd.reconnect || !c->events.reconnect || !c->renew) {
        cluster_free(c);
        return NULL;
    }
    struct timeval tv = {RENEW_EVERY_MS / 1000, (RENEW_EVERY_MS % 1000) * 1000};
    evtimer_add(c->renew, &tv);
    link_connect(&c->cmd);
    link_connect(&c->events);
    if (c->sentinel)
        log_info("cluster: this node is %s; fetch leases in the redis master %s (sentinel)",
                 cfg->cluster.advertise, c->host);
    else
        log_info("cluster: this node is %s; fetch leases in redis %s:%d", cfg->cluster.advertise,
                 c->host, c->port);
    return c;
}

void cluster_free(struct cluster *c)
{
    if (!c)
        return;
    c->closing = true;
    struct link *links[] = {&c->cmd, &c->events};
    for (size_t i = 0; i < 2; i++) {
        struct link *l = links[i];
        if (l->ac) {
            redisAsyncContext *ac = l->ac;
            l->ac = NULL;
            ac->data = NULL;
            redisAsyncFree(ac); /* pending replies come now, with NULL: their ops are freed */
        }
        if (l->reconnect)
            event_free(l->reconnect);
        redis_sentinel_cancel(l->ask);
    }
    if (c->renew)
        event_free(c->renew);
    if (c->sync)
        redisFree(c->sync);
    redis_sentinel_free(c->sentinel);
    pthread_mutex_destroy(&c->sync_mu);
    free(c->held);
    free(c);
}

/* ---- peers ---- */

static void token_mac(const char *secret, const struct digest *d, long long t, char hex[65])
{
    char ds[DIGEST_STR_MAX], msg[DIGEST_STR_MAX + 32];
    int n = snprintf(msg, sizeof(msg), "%s\n%lld", digest_str(d, ds), t);
    unsigned char mac[32];
    unsigned int len = sizeof(mac);
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)msg, (size_t)n, mac,
         &len);
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
}

void cluster_peer_token(const char *secret, const struct digest *d, time_t now,
                        char out[CLUSTER_TOKEN_MAX])
{
    char hex[65];
    token_mac(secret, d, (long long)now, hex);
    snprintf(out, CLUSTER_TOKEN_MAX, "%lld.%s", (long long)now, hex);
}

bool cluster_peer_check(const char *secret, const struct digest *d, const char *token, time_t now)
{
    if (!secret[0] || !token)
        return false;
    char *end;
    long long t = strtoll(token, &end, 10);
    if (end == token || *end != '.' || strlen(end + 1) != 64)
        return false;
    if (t < (long long)now - TOKEN_LIFETIME_S || t > (long long)now + TOKEN_LIFETIME_S)
        return false;
    char hex[65];
    token_mac(secret, d, t, hex);
    return CRYPTO_memcmp(hex, end + 1, 64) == 0;
}
