/*
 * test_cache_redis: the redis blob-descriptor cache against a real /usr/bin/redis-server
 * (free loopback port, temp dir, no persistence), started and killed by the tests.
 *
 * The rule under test: Redis is a cache, never the truth. A hit must equal the truth, a
 * miss or "unavailable" sends the caller to the truth; Redis down, slow, flushed or
 * restarted must never produce a wrong answer or a hang, and the cache reconnects alone.
 * Each test drives its own event loop with a deadline, so a hang fails instead of blocking.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "log.h"
#include "peer.h"

#define REDIS_BIN "/usr/bin/redis-server"

static char tmpdir[64];
static struct event_base *base;

/* ---- redis-server processes ---- */

struct server {
    pid_t pid;
    int port;
    const char *password;
};

/* servers still running, killed by the group teardown when a test failed half-way */
static pid_t live[8];

static void live_set(pid_t old, pid_t pid)
{
    for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
        if (live[i] == old) {
            live[i] = pid;
            return;
        }
    }
}

static redisContext *sync_connect(const struct server *s)
{
    struct timeval tv = {1, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (!rc || rc->err) {
        if (rc)
            redisFree(rc);
        return NULL;
    }
    redisSetTimeout(rc, tv);
    if (s->password) {
        redisReply *r = redisCommand(rc, "AUTH %s", s->password);
        if (r)
            freeReplyObject(r);
    }
    return rc;
}

static void server_start(struct server *s)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", s->port);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        if (s->password)
            execl(REDIS_BIN, REDIS_BIN, "--port", port, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", tmpdir, "--enable-debug-command", "local",
                  "--requirepass", s->password, (char *)NULL);
        else
            execl(REDIS_BIN, REDIS_BIN, "--port", port, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", tmpdir, "--enable-debug-command", "local",
                  (char *)NULL);
        _exit(127);
    }
    live_set(0, s->pid);
    for (int i = 0; i < 500; i++) {
        redisContext *rc = sync_connect(s);
        if (rc) {
            redisReply *r = redisCommand(rc, "PING");
            bool up = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
            redisFree(rc);
            if (up)
                return;
        }
        usleep(10000);
    }
    fail_msg("redis-server did not start on port %d", s->port);
}

static void server_kill(struct server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGCONT);
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        live_set(s->pid, 0);
        s->pid = 0;
    }
}

/* Runs one command on a fresh synchronous connection; returns the reply (caller frees). */
static redisReply *cmd(const struct server *s, const char *fmt, ...)
{
    va_list ap;
    redisContext *rc = sync_connect(s);
    redisReply *r;
    assert_non_null(rc);
    va_start(ap, fmt);
    r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    redisFree(rc);
    assert_non_null(r);
    return r;
}

static void cmd_ok(const struct server *s, const char *fmt, const char *a1, const char *a2)
{
    redisReply *r = cmd(s, fmt, a1, a2);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

/* ---- loop helpers ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg) {}

/* Runs the loop until *done is true or ms passed; returns *done. */
static bool run_until(const bool *done, int ms)
{
    struct timeval tv = {0, 5000};
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    int64_t end = mono_ms() + ms;
    event_add(tick, &tv);
    while (!(done && *done) && mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
    return done ? *done : true;
}

static void spin(int ms)
{
    run_until(NULL, ms);
}

struct res {
    int calls, found;
    bool done, inline_answer;
    struct cache_desc d;
};

static bool in_get;

static void on_get(void *ctx, int found, const struct cache_desc *d)
{
    struct res *r = ctx;
    r->calls++;
    r->found = found;
    r->done = true;
    r->inline_answer = in_get;
    if (d)
        r->d = *d;
}

static void start_get(struct cache *c, const char *repo, const struct digest *d, struct res *r)
{
    memset(r, 0, sizeof(*r));
    in_get = true;
    cache_get(c, repo, d, on_get, r);
    in_get = false;
}

/* A get, awaited; fails on a hang (limit ms). */
static int get_wait(struct cache *c, const char *repo, const struct digest *d,
                    struct cache_desc *out, int ms)
{
    struct res r;
    start_get(c, repo, d, &r);
    assert_true(run_until(&r.done, ms));
    assert_int_equal(r.calls, 1);
    assert_false(r.inline_answer);
    if (out && r.found == 1)
        *out = r.d;
    return r.found;
}

/* Polls until a get answers want (after an outage); fails after ms. */
static void get_until(struct cache *c, const char *repo, const struct digest *d, int want, int ms)
{
    int64_t end = mono_ms() + ms;
    while (mono_ms() < end) {
        if (get_wait(c, repo, d, NULL, 3000) == want)
            return;
        spin(20);
    }
    fail_msg("get never answered %d", want);
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

static struct cache *new_cache(const struct server *s, const char *password, int db)
{
    char addr[32];
    struct cache_redis_config rc = {0};
    struct cache *c;
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s->port);
    rc.addr = addr;
    rc.password = password;
    rc.db = db;
    rc.dialtimeout_ms = 300;
    rc.readtimeout_ms = 200;
    rc.writetimeout_ms = 100;
    rc.maxactive = 3;
    rc.ttl_s = 3600;
    c = cache_redis_new(base, &rc);
    assert_non_null(c);
    return c;
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/regmirror-redis-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    base = event_base_new();
    return base ? 0 : -1;
}

static int teardown(void **state)
{
    char cmdline[128];
    for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
        struct server s = {.pid = live[i]};
        server_kill(&s);
    }
    event_base_free(base);
    snprintf(cmdline, sizeof(cmdline), "rm -rf %s", tmpdir);
    return system(cmdline) == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_roundtrip_and_layout(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c;
    struct cache_desc got, d1 = mkdesc(1, 4242, "application/vnd.oci.image.layer.v1.tar+gzip");
    char dstr[DIGEST_STR_MAX], key[512];
    redisReply *r;

    server_start(&s);
    c = new_cache(&s, NULL, 0);
    digest_str(&d1.digest, dstr);

    assert_int_equal(get_wait(c, NULL, &d1.digest, NULL, 2000), 0);
    cache_put(c, "library/alpine", &d1);
    assert_int_equal(get_wait(c, NULL, &d1.digest, &got, 2000), 1);
    assert_true(digest_equal(&got.digest, &d1.digest));
    assert_int_equal(got.size, 4242);
    assert_string_equal(got.media_type, d1.media_type);
    assert_int_equal(get_wait(c, "library/alpine", &d1.digest, &got, 2000), 1);
    assert_int_equal(get_wait(c, "library/other", &d1.digest, NULL, 2000), 0);

    /* registry:2's key layout, with TTLs */
    snprintf(key, sizeof(key), "blobs::%s", dstr);
    r = cmd(&s, "HMGET %s digest size mediatype", key);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_string_equal(r->element[0]->str, dstr);
    assert_string_equal(r->element[1]->str, "4242");
    assert_string_equal(r->element[2]->str, d1.media_type);
    freeReplyObject(r);
    r = cmd(&s, "TTL %s", key);
    assert_true(r->integer > 3000 && r->integer <= 3600);
    freeReplyObject(r);
    r = cmd(&s, "SISMEMBER repository::library/alpine::blobs %s", dstr);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    snprintf(key, sizeof(key), "repository::library/alpine::blobs::%s", dstr);
    r = cmd(&s, "HGET %s mediatype", key);
    assert_string_equal(r->str, d1.media_type);
    freeReplyObject(r);

    /* per-repository media type overrides the global one */
    struct cache_desc d1b = d1;
    snprintf(d1b.media_type, sizeof(d1b.media_type), "application/octet-stream");
    cache_put(c, "other/repo", &d1b);
    assert_int_equal(get_wait(c, "other/repo", &d1.digest, &got, 2000), 1);
    assert_string_equal(got.media_type, "application/octet-stream");
    assert_int_equal(get_wait(c, NULL, &d1.digest, &got, 2000), 1);
    assert_string_equal(got.media_type, d1.media_type);

    /* unlink from one repository, then the blob's data goes */
    cache_forget(c, "library/alpine", &d1.digest);
    assert_int_equal(get_wait(c, "library/alpine", &d1.digest, NULL, 2000), 0);
    assert_int_equal(get_wait(c, "other/repo", &d1.digest, NULL, 2000), 1);
    cache_forget(c, NULL, &d1.digest);
    assert_int_equal(get_wait(c, NULL, &d1.digest, NULL, 2000), 0);
    assert_int_equal(get_wait(c, "other/repo", &d1.digest, NULL, 2000), 0);

    cache_free(c);
    server_kill(&s);
}

static void test_registry2_entries_and_garbage(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c;
    struct cache_desc got;
    struct digest d2 = mkdigest(2), d3 = mkdigest(3), d4 = mkdigest(4), d5 = mkdigest(5);
    char k[128], v[DIGEST_STR_MAX];

    server_start(&s);
    c = new_cache(&s, NULL, 0);
    /* written the way registry:2 writes them */
    snprintf(k, sizeof(k), "blobs::%s", digest_str(&d2, v));
    cmd_ok(&s, "HMSET %s digest %s size 77", k, v);
    cmd_ok(&s, "HSETNX %s mediatype %s", k, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    cmd_ok(&s, "SADD repository::a/b::blobs %s", v, NULL);
    assert_int_equal(get_wait(c, NULL, &d2, &got, 2000), 1);
    assert_int_equal(got.size, 77);
    assert_string_equal(got.media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    assert_int_equal(get_wait(c, "a/b", &d2, &got, 2000), 1);
    /* an old entry with "length" instead of "size": a miss, as in registry:2 */
    snprintf(k, sizeof(k), "blobs::%s", digest_str(&d3, v));
    cmd_ok(&s, "HMSET %s digest %s length 5", k, v);
    assert_int_equal(get_wait(c, NULL, &d3, NULL, 2000), 0);
    /* garbage: never a hit */
    snprintf(k, sizeof(k), "blobs::%s", digest_str(&d4, v));
    cmd_ok(&s, "HMSET %s digest %s size -12", k, v);
    assert_int_equal(get_wait(c, NULL, &d4, NULL, 2000), 0);
    snprintf(k, sizeof(k), "blobs::%s", digest_str(&d5, v));
    cmd_ok(&s, "HMSET %s digest %s size 1", k, digest_str(&d4, v));
    assert_int_equal(get_wait(c, NULL, &d5, NULL, 2000), 0);
    /* wrong type: WRONGTYPE error -> unavailable, not a hit */
    cmd_ok(&s, "SET %s %s", k, "x");
    assert_int_equal(get_wait(c, NULL, &d5, NULL, 2000), -1);

    cache_free(c);
    server_kill(&s);
}

static void test_flushed(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c;
    struct cache_desc d = mkdesc(6, 6, "x");
    redisReply *r;

    server_start(&s);
    c = new_cache(&s, NULL, 0);
    cache_put(c, "r", &d);
    assert_int_equal(get_wait(c, "r", &d.digest, NULL, 2000), 1);
    r = cmd(&s, "FLUSHALL");
    freeReplyObject(r);
    assert_int_equal(get_wait(c, "r", &d.digest, NULL, 2000), 0);
    assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 2000), 0);
    cache_free(c);
    server_kill(&s);
}

static void test_down_then_up(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c = new_cache(&s, NULL, 0);
    struct cache_desc d = mkdesc(7, 7, "x");
    int64_t t0 = mono_ms();

    /* nothing listens: answered -1 from the loop, quickly */
    assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 2000), -1);
    assert_true(mono_ms() - t0 < 1000);
    cache_put(c, NULL, &d); /* dropped, no harm */
    server_start(&s);
    /* the cache reconnects by itself */
    get_until(c, NULL, &d.digest, 0, 5000);
    cache_put(c, NULL, &d);
    get_until(c, NULL, &d.digest, 1, 2000);
    cache_free(c);
    server_kill(&s);
}

/*
 * The pull loop: 60 blobs in 3 repositories; the truth is this table. Each round looks up
 * a batch concurrently; a hit must equal the truth, a miss/unavailable "reads storage" and
 * puts the descriptor back. Blobs are deleted and re-pushed along the way (forget/put).
 * redis-server is killed and restarted twice during the loop.
 */
#define NBLOBS 60
struct truth {
    bool present[NBLOBS];
    uint64_t size[NBLOBS];
};

static const char *repo_of(unsigned i)
{
    static const char *repos[] = {"library/alpine", "library/debian", "org/app"};
    return repos[i % 3];
}

static void test_kill_restart_loop(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c;
    struct truth t;
    struct res res[NBLOBS];
    unsigned wrong = 0, hits = 0, misses = 0, unavailable = 0, hits_after_restart = 0;
    unsigned rounds = 0;
    int64_t start, now;
    int phase = 0; /* 0 up, 1 killed, 2 restarted, 3 killed, 4 restarted */

    server_start(&s);
    c = new_cache(&s, NULL, 0);
    for (unsigned i = 0; i < NBLOBS; i++) {
        t.present[i] = true;
        t.size[i] = 1000 + i;
    }
    start = mono_ms();
    while ((now = mono_ms()) - start < 7000) {
        int64_t el = now - start;
        if (phase == 0 && el > 1200) {
            server_kill(&s);
            phase = 1;
        } else if (phase == 1 && el > 2400) {
            server_start(&s);
            phase = 2;
        } else if (phase == 2 && el > 4000) {
            server_kill(&s);
            phase = 3;
        } else if (phase == 3 && el > 4600) {
            server_start(&s);
            phase = 4;
        }
        /* the truth changes: delete one blob, re-push another */
        unsigned del = (rounds * 7) % NBLOBS, add = (rounds * 11 + 3) % NBLOBS;
        if (t.present[del]) {
            struct digest d = mkdigest(del);
            t.present[del] = false;
            cache_forget(c, repo_of(del), &d);
            cache_forget(c, NULL, &d);
        }
        if (!t.present[add]) {
            struct cache_desc d = mkdesc(add, ++t.size[add], "application/vnd.oci.image.layer");
            t.present[add] = true;
            cache_put(c, repo_of(add), &d);
        }
        /* a batch of concurrent lookups */
        for (unsigned i = 0; i < NBLOBS; i++) {
            struct digest d = mkdigest(i);
            start_get(c, repo_of(i), &d, &res[i]);
        }
        for (unsigned i = 0; i < NBLOBS; i++) {
            assert_true(run_until(&res[i].done, 3000));
            assert_int_equal(res[i].calls, 1);
            assert_false(res[i].inline_answer);
        }
        for (unsigned i = 0; i < NBLOBS; i++) {
            if (res[i].found == 1) {
                hits++;
                if (phase == 4)
                    hits_after_restart++;
                if (!t.present[i] || res[i].d.size != t.size[i] ||
                    strcmp(res[i].d.media_type, "application/vnd.oci.image.layer") != 0) {
                    wrong++;
                    print_error("wrong answer for blob %u in round %u\n", i, rounds);
                }
            } else {
                if (res[i].found == 0)
                    misses++;
                else
                    unavailable++;
                /* fall back to storage; cache what it says */
                if (t.present[i]) {
                    struct cache_desc d = mkdesc(i, t.size[i], "application/vnd.oci.image.layer");
                    cache_put(c, repo_of(i), &d);
                }
            }
        }
        rounds++;
        spin(10);
    }
    print_message("kill/restart loop: %u rounds, %u hits (%u after the last restart), "
                  "%u misses, %u unavailable, %u wrong\n",
                  rounds, hits, hits_after_restart, misses, unavailable, wrong);
    assert_int_equal(wrong, 0);
    assert_true(hits > 0);
    assert_true(hits_after_restart > 0);
    assert_true(unavailable > 0);
    cache_free(c);
    server_kill(&s);
}

/* A forget issued while Redis is unreachable is delivered when it comes back: the entry
 * (which survives, the server was only stopped) must not be served. */
static void test_forget_survives_outage(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c;
    struct cache_desc d = mkdesc(8, 8, "x");

    server_start(&s);
    c = new_cache(&s, NULL, 0);
    cache_put(c, "r", &d);
    assert_int_equal(get_wait(c, "r", &d.digest, NULL, 2000), 1);
    kill(s.pid, SIGSTOP);
    cache_forget(c, "r", &d.digest); /* sent, never answered: the connection times out */
    assert_int_equal(get_wait(c, "r", &d.digest, NULL, 2000), -1);
    cache_forget(c, NULL, &d.digest); /* issued while down */
    spin(300);
    assert_true(cache_pending(c) > 0);
    kill(s.pid, SIGCONT);
    get_until(c, NULL, &d.digest, 0, 5000);
    assert_int_equal(get_wait(c, "r", &d.digest, NULL, 2000), 0);
    assert_int_equal(cache_pending(c), 0);
    cache_free(c);
    server_kill(&s);
}

static void test_password_and_db(void **state)
{
    struct server s = {.port = peer_free_port(), .password = "s3cret pass"};
    struct cache *c, *bad;
    struct cache_desc d = mkdesc(9, 99, "x");
    char dstr[DIGEST_STR_MAX], key[128];
    redisReply *r;

    server_start(&s);
    c = new_cache(&s, "s3cret pass", 3);
    cache_put(c, "r", &d);
    assert_int_equal(get_wait(c, "r", &d.digest, NULL, 2000), 1);
    snprintf(key, sizeof(key), "blobs::%s", digest_str(&d.digest, dstr));
    r = cmd(&s, "EXISTS %s", key); /* db 0 */
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    {
        redisContext *rc = sync_connect(&s);
        assert_non_null(rc);
        r = redisCommand(rc, "SELECT 3");
        freeReplyObject(r);
        r = redisCommand(rc, "EXISTS %s", key);
        assert_int_equal(r->integer, 1);
        freeReplyObject(r);
        redisFree(rc);
    }
    /* a wrong password: unavailable, quickly, never a hang */
    bad = new_cache(&s, "wrong", 3);
    assert_int_equal(get_wait(bad, "r", &d.digest, NULL, 2000), -1);
    spin(100);
    assert_int_equal(get_wait(bad, "r", &d.digest, NULL, 2000), -1);
    /* no password at all */
    cache_free(bad);
    bad = new_cache(&s, NULL, 3);
    assert_int_equal(get_wait(bad, "r", &d.digest, NULL, 2000), -1);
    cache_free(bad);
    cache_free(c);
    server_kill(&s);
}

static void test_slow_server(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c;
    struct cache_desc d = mkdesc(10, 10, "x");
    int64_t t0;

    server_start(&s);
    c = new_cache(&s, NULL, 0);
    cache_put(c, NULL, &d);
    assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 2000), 1);

    /* DEBUG SLEEP 1: longer than read + write timeout (300 ms) */
    {
        redisContext *rc = sync_connect(&s);
        int wdone = 0;
        assert_non_null(rc);
        redisAppendCommand(rc, "DEBUG SLEEP 1");
        while (!wdone)
            assert_int_equal(redisBufferWrite(rc, &wdone), REDIS_OK);
        usleep(50000);
        t0 = mono_ms();
        assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 3000), -1);
        assert_true(mono_ms() - t0 < 800);
        redisFree(rc);
    }
    get_until(c, NULL, &d.digest, 1, 5000);

    /* SIGSTOP: the server accepts connections but never answers */
    kill(s.pid, SIGSTOP);
    t0 = mono_ms();
    assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 3000), -1);
    assert_true(mono_ms() - t0 < 800);
    /* while stopped: re-dials time out too, every get still answers in bounded time */
    for (int i = 0; i < 5; i++) {
        t0 = mono_ms();
        assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 3000), -1);
        assert_true(mono_ms() - t0 < 800);
        spin(100);
    }
    kill(s.pid, SIGCONT);
    get_until(c, NULL, &d.digest, 1, 5000);
    cache_free(c);
    server_kill(&s);
}

static void test_cancel_and_free(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache *c;
    struct cache_desc d = mkdesc(11, 11, "x");
    struct res r1, r2, r3;
    struct cache_op *op;

    server_start(&s);
    c = new_cache(&s, NULL, 0);
    cache_put(c, NULL, &d);
    assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 2000), 1);

    /* cancelled before the reply: the callback never runs */
    memset(&r1, 0, sizeof(r1));
    op = cache_get(c, NULL, &d.digest, on_get, &r1);
    assert_non_null(op);
    cache_op_cancel(op);
    start_get(c, NULL, &d.digest, &r2);
    assert_true(run_until(&r2.done, 2000));
    spin(50);
    assert_int_equal(r1.calls, 0);
    assert_int_equal(r2.found, 1);

    /* cancelled while queued to be answered -1 (Redis down) */
    kill(s.pid, SIGSTOP);
    assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 3000), -1);
    memset(&r1, 0, sizeof(r1));
    op = cache_get(c, NULL, &d.digest, on_get, &r1);
    assert_non_null(op);
    cache_op_cancel(op);
    spin(50);
    assert_int_equal(r1.calls, 0);
    kill(s.pid, SIGCONT);
    get_until(c, NULL, &d.digest, 1, 5000);

    /* cache_free answers what is pending with -1, exactly once */
    kill(s.pid, SIGSTOP);
    spin(20);
    start_get(c, NULL, &d.digest, &r3);
    assert_int_equal(r3.calls, 0);
    cache_free(c);
    assert_int_equal(r3.calls, 1);
    assert_int_equal(r3.found, -1);
    server_kill(&s);
}

static int clients(const struct server *s)
{
    redisReply *r = cmd(s, "INFO clients");
    const char *p = strstr(r->str, "connected_clients:");
    int n = p ? atoi(p + strlen("connected_clients:")) : -1;
    freeReplyObject(r);
    return n - 1; /* not counting the asking connection */
}

static void test_pending_cap_and_idle(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache_redis_config rc = {0};
    struct cache *c;
    struct cache_desc d = mkdesc(13, 13, "x");
    struct res r[5];
    char addr[32];
    int64_t t0;

    server_start(&s);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s.port);
    rc.addr = addr;
    rc.maxactive = 1;
    rc.max_pending = 2;
    rc.idletimeout_ms = 200;
    rc.maxidle = 0;
    rc.readtimeout_ms = 300;
    c = cache_redis_new(base, &rc);
    assert_non_null(c);
    /* (the handshake counts against max_pending while connecting) */
    cache_put(c, NULL, &d);
    get_until(c, NULL, &d.digest, 1, 2000);
    assert_int_equal(clients(&s), 1);

    /* bounded: with 2 in flight on a stopped server, the others answer -1 at once */
    kill(s.pid, SIGSTOP);
    t0 = mono_ms();
    for (int i = 0; i < 5; i++)
        start_get(c, NULL, &d.digest, &r[i]);
    assert_true(run_until(&r[4].done, 200));
    assert_int_equal(r[2].found, -1);
    assert_int_equal(r[3].found, -1);
    assert_int_equal(r[4].found, -1);
    assert_true(mono_ms() - t0 < 200);
    assert_true(run_until(&r[1].done, 2000));
    assert_int_equal(r[0].found, -1);
    assert_int_equal(r[1].found, -1);
    for (int i = 0; i < 5; i++)
        assert_int_equal(r[i].calls, 1);
    kill(s.pid, SIGCONT);
    get_until(c, NULL, &d.digest, 1, 5000);

    /* idle: closed after idletimeout (maxidle 0), re-dialled on the next get */
    spin(600);
    assert_int_equal(clients(&s), 0);
    assert_int_equal(get_wait(c, NULL, &d.digest, NULL, 2000), 1);
    cache_free(c);
    server_kill(&s);
}

static void test_hostname_and_bad_addr(void **state)
{
    struct server s = {.port = peer_free_port()};
    struct cache_redis_config rc = {0};
    struct cache *c;
    struct cache_desc d = mkdesc(12, 12, "x");
    char addr[32];

    rc.addr = "no-port";
    assert_null(cache_redis_new(base, &rc));
    rc.addr = "host:99999";
    assert_null(cache_redis_new(base, &rc));

    server_start(&s);
    snprintf(addr, sizeof(addr), "localhost:%d", s.port);
    rc.addr = addr;
    c = cache_redis_new(base, &rc);
    assert_non_null(c);
    /* the first get may race the resolution; the cache gets there by itself */
    cache_put(c, NULL, &d);
    get_until(c, NULL, &d.digest, 1, 5000);
    cache_free(c);
    server_kill(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_and_layout),
        cmocka_unit_test(test_registry2_entries_and_garbage),
        cmocka_unit_test(test_flushed),
        cmocka_unit_test(test_down_then_up),
        cmocka_unit_test(test_kill_restart_loop),
        cmocka_unit_test(test_forget_survives_outage),
        cmocka_unit_test(test_password_and_db),
        cmocka_unit_test(test_slow_server),
        cmocka_unit_test(test_cancel_and_free),
        cmocka_unit_test(test_pending_cap_and_idle),
        cmocka_unit_test(test_hostname_and_bad_addr),
    };
    if (access(REDIS_BIN, X_OK) != 0) {
        fprintf(stderr, "test_cache_redis: %s missing\n", REDIS_BIN);
        return 1;
    }
    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    return cmocka_run_group_tests(tests, setup, teardown);
}
