/*
 * test_proxy: blob fetches through the proxy, in process. The daemon's parts run on this
 * thread's loop (server, proxy, upstream client, a filesystem store in a temporary
 * directory); a fake upstream registry answers on a thread of its own with scripted faults
 * (held, slow, cut or corrupted bodies), and clients on threads read at their own pace or
 * hang up. Every scenario runs with storage work inline on a local store (the filesystem
 * path) and on worker threads with the store wrapped as remote, so blobs are spooled apart and
 * imported (the OSS path). ASan and LeakSanitizer check the
 * lifetimes: every party cancelled at every step leaves nothing behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "digest.h"
#include "httpc.h"
#include "log.h"
#include "offload.h"
#include "peer.h"
#include "proxy.h"
#include "registry.h"
#include "server.h"
#include "storage.h"
#include "storage_wrap.h"

#define BLOB_SIZE (3u * 1024 * 1024 + 17)
#define NAME "lib/app"
#define CLIENTS_MAX 8

/* ---- the fake upstream ---- */

struct fake {
    int lfd;
    int port;
    pthread_t thread;
    atomic_int stop;
    atomic_int blob_gets;
    /* the script of the next blob GETs */
    atomic_int hold;        /* the body waits until released */
    atomic_int delay_us;    /* between 64 KiB pieces */
    atomic_long cut_after;  /* close after this many body bytes (-1: never) */
    atomic_long corrupt_at; /* flip this byte (-1: none) */
    atomic_int faults;      /* how many GETs the cut/corrupt apply to */
};

static unsigned char *blob;
static char blob_digest[DIGEST_STR_MAX];
static struct fake fake;

static void fake_answer(int fd)
{
    char req[4096];
    size_t n = 0;
    while (n < sizeof(req) - 1 && !strstr(req, "\r\n\r\n")) {
        ssize_t k = recv(fd, req + n, sizeof(req) - 1 - n, 0);
        if (k <= 0)
            return;
        n += (size_t)k;
        req[n] = '\0';
    }
    bool head = strncmp(req, "HEAD ", 5) == 0;
    char path[1024] = "";
    sscanf(req, "%*s %1023s", path);
    char hdr[512];
    if (!strstr(path, "/blobs/") || !strstr(path, blob_digest)) {
        const char *nf = "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n"
                         "Content-Type: application/json\r\n\r\n{}";
        if (strcmp(path, "/v2/") == 0)
            nf = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        peer_send_all(fd, nf, strlen(nf));
        return;
    }
    int len = snprintf(hdr, sizeof(hdr),
                       "HTTP/1.1 200 OK\r\nContent-Length: %u\r\nDocker-Content-Digest: %s\r\n"
                       "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                       BLOB_SIZE, blob_digest);
    peer_send_all(fd, hdr, (size_t)len);
    if (head)
        return;
    atomic_fetch_add(&fake.blob_gets, 1);
    bool faulty = atomic_load(&fake.faults) > 0 && atomic_fetch_sub(&fake.faults, 1) > 0;
    long cut = faulty ? atomic_load(&fake.cut_after) : -1;
    long corrupt = faulty ? atomic_load(&fake.corrupt_at) : -1;
    while (atomic_load(&fake.hold) && !atomic_load(&fake.stop))
        usleep(1000);
    unsigned char piece[64 * 1024];
    for (size_t off = 0; off < BLOB_SIZE && !atomic_load(&fake.stop);) {
        size_t k = BLOB_SIZE - off < sizeof(piece) ? BLOB_SIZE - off : sizeof(piece);
        if (cut >= 0 && off + k > (size_t)cut)
            k = (size_t)cut - off;
        memcpy(piece, blob + off, k);
        if (corrupt >= 0 && (size_t)corrupt >= off && (size_t)corrupt < off + k)
            piece[corrupt - (long)off] ^= 0xff;
        peer_send_all(fd, piece, k);
        off += k;
        if (cut >= 0 && off >= (size_t)cut)
            return;
        if (atomic_load(&fake.delay_us))
            usleep((useconds_t)atomic_load(&fake.delay_us));
    }
}

static void *fake_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&fake.stop)) {
        int fd = accept(fake.lfd, NULL, NULL);
        if (fd < 0)
            continue;
        fake_answer(fd);
        /* A lingering close: closing with unread input would reset what is still queued. */
        shutdown(fd, SHUT_WR);
        char sink[4096];
        while (recv(fd, sink, sizeof(sink), 0) > 0)
            ;
        close(fd);
    }
    return NULL;
}

/* ---- the mirror, on this thread's loop ---- */

struct mirror {
    char root[64];
    struct config cfg;
    struct event_base *base;
    struct httpc *hc;
    struct offload *ol;
    struct storage *st;
    struct registry *reg;
    struct proxy *px;
    struct server *srv;
    int port;
};

static void mirror_start(struct mirror *m, unsigned threads, int maxfetches)
{
    snprintf(m->root, sizeof(m->root), "/tmp/regmirror-test-proxy-XXXXXX");
    assert_non_null(mkdtemp(m->root));
    m->port = peer_free_port();
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "version: 0.1\n"
             "log:\n  level: error\n"
             "storage:\n  filesystem:\n    rootdirectory: %s/store\n  delete:\n    enabled: true\n"
             "http:\n  addr: 127.0.0.1:%d\n"
             "proxy:\n  remoteurl: http://127.0.0.1:%d\n  spooldir: %s/spool\n"
             "  maxfetches: %d\n  fetchqueuetimeout: 5s\n",
             m->root, m->port, fake.port, m->root, maxfetches);
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/store", m->root);
    mkdir(dir, 0700);
    snprintf(dir, sizeof(dir), "%s/spool", m->root);
    mkdir(dir, 0700);
    char *const envp[] = {NULL};
    struct config_diag diag;
    int rc = config_load_string(yaml, strlen(yaml), "test", envp, &m->cfg, &diag);
    config_diag_free(&diag);
    assert_int_equal(rc, 0);
    m->base = event_base_new();
    m->hc = httpc_new(m->base);
    m->ol = offload_new(m->base, threads);
    snprintf(dir, sizeof(dir), "%s/store", m->root);
    m->st = storage_fs_new(dir);
    if (threads > 0) {
        /* A remote store, as the proxy sees it: blobs are spooled apart, then imported. */
        struct storage_wrap *w = storage_wrap_new(m->st, sizeof(*w), NULL, NULL);
        assert_non_null(w);
        w->base.local = false;
        m->st = &w->base;
    }
    struct registry_opts opts = {.delete_enabled = true};
    m->reg = registry_new(m->st, &opts);
    m->px = proxy_new(m->base, &m->cfg, m->reg, m->hc, m->ol);
    m->srv = server_new(m->base, &m->cfg, m->reg, m->px, NULL, m->ol);
    assert_non_null(m->hc);
    assert_non_null(m->ol);
    assert_non_null(m->reg);
    assert_non_null(m->px);
    assert_non_null(m->srv);
}

/* The daemon's order: the server aborts its requests, the proxy cuts its fetches, the pool
 * drains, then the server (and its api) goes. */
static void mirror_stop(struct mirror *m)
{
    server_close(m->srv);
    proxy_free(m->px);
    offload_free(m->ol);
    server_free(m->srv);
    httpc_free(m->hc);
    registry_free(m->reg);
    storage_free(m->st);
    event_base_free(m->base);
    config_free(&m->cfg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", m->root);
    assert_int_equal(system(cmd), 0);
}

static bool blob_stored(const struct mirror *m)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/store/docker/registry/v2/blobs/sha256/%.2s/%s/data", m->root,
             blob_digest + 7, blob_digest + 7);
    struct stat sb;
    return stat(path, &sb) == 0 && sb.st_size == BLOB_SIZE;
}

/* ---- clients ---- */

struct client {
    pthread_t thread;
    int port;
    const char *range;  /* a Range header, or NULL */
    int read_delay_us;  /* between 16 KiB reads: a slow reader */
    long hangup_after;  /* close after this many body bytes (-1: never; 0: before any) */
    int start_after_ms; /* a late joiner */
    /* results */
    int status;
    long content_length;
    size_t got;
    bool complete; /* the body is all Content-Length announced */
    bool correct;  /* and it is the blob's bytes (or the range's) */
    atomic_int done;
};

static atomic_int clients_running;

static void *client_thread(void *arg)
{
    struct client *c = arg;
    if (c->start_after_ms)
        usleep((useconds_t)c->start_after_ms * 1000);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)c->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    c->content_length = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        goto out;
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET /v2/" NAME "/blobs/%s HTTP/1.1\r\nHost: mirror\r\n%s%s%s"
                     "Connection: close\r\n\r\n",
                     blob_digest, c->range ? "Range: " : "", c->range ? c->range : "",
                     c->range ? "\r\n" : "");
    peer_send_all(fd, req, (size_t)n);
    if (c->hangup_after == 0)
        goto out;
    size_t cap = BLOB_SIZE + 65536, len = 0;
    unsigned char *buf = malloc(cap);
    size_t body_at = 0;
    for (;;) {
        size_t want = cap - len < 16384 ? cap - len : 16384;
        ssize_t k = want ? recv(fd, buf + len, want, 0) : 0;
        if (k <= 0)
            break;
        len += (size_t)k;
        if (!body_at) {
            buf[len < cap ? len : cap - 1] = '\0';
            char *end = strstr((char *)buf, "\r\n\r\n");
            if (end)
                body_at = (size_t)(end + 4 - (char *)buf);
        }
        if (body_at && c->hangup_after > 0 && len - body_at >= (size_t)c->hangup_after)
            break;
        if (c->read_delay_us)
            usleep((useconds_t)c->read_delay_us);
    }
    if (body_at) {
        sscanf((char *)buf, "HTTP/1.1 %d", &c->status);
        char *cl = strcasestr((char *)buf, "\r\nContent-Length: ");
        if (cl && cl < (char *)buf + body_at)
            c->content_length = strtol(cl + 18, NULL, 10);
        c->got = len - body_at;
        c->complete = c->content_length >= 0 && c->got == (size_t)c->content_length;
        size_t from = 0;
        if (c->range)
            sscanf(c->range, "bytes=%zu", &from);
        c->correct = c->complete && from + c->got <= BLOB_SIZE &&
                     memcmp(buf + body_at, blob + from, c->got) == 0;
    }
    free(buf);
out:
    close(fd);
    atomic_store(&c->done, 1);
    atomic_fetch_sub(&clients_running, 1);
    return NULL;
}

static void client_go(struct client *c, const struct mirror *m)
{
    c->port = m->port;
    atomic_fetch_add(&clients_running, 1);
    assert_int_equal(pthread_create(&c->thread, NULL, client_thread, c), 0);
}

static void client_init(struct client *c)
{
    memset(c, 0, sizeof(*c));
    c->hangup_after = -1;
}

/* Runs the loop until every client is done, then a little longer so what they left behind
 * (a fetch without readers, an import) settles. */
static int64_t settle_ms;

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
    struct event_base *base = arg;
    static int quiet;
    if (atomic_load(&clients_running) > 0) {
        quiet = 0;
        return;
    }
    if (++quiet * 10 >= settle_ms) {
        quiet = 0;
        event_base_loopbreak(base);
    }
}

static void run(struct mirror *m, struct client *cs, size_t n, int64_t settle)
{
    settle_ms = settle;
    struct event *ev = event_new(m->base, -1, EV_PERSIST, poll_cb, m->base);
    struct timeval tv = {0, 10000};
    event_add(ev, &tv);
    event_base_dispatch(m->base);
    event_free(ev);
    for (size_t i = 0; i < n; i++)
        pthread_join(cs[i].thread, NULL);
}

static void script_reset(void)
{
    atomic_store(&fake.blob_gets, 0);
    atomic_store(&fake.hold, 0);
    atomic_store(&fake.delay_us, 0);
    atomic_store(&fake.cut_after, -1);
    atomic_store(&fake.corrupt_at, -1);
    atomic_store(&fake.faults, 0);
}

/* ---- scenarios, each with storage work inline (0 threads) and on 2 threads ---- */

static const unsigned variants[] = {0, 2};

static void test_one_fetch_then_stored(void **state)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        mirror_start(&m, variants[v], 64);
        struct client c;
        client_init(&c);
        client_go(&c, &m);
        run(&m, &c, 1, 200);
        assert_int_equal(c.status, 200);
        assert_true(c.correct);
        assert_true(blob_stored(&m));
        /* Stored: the next GET reads the store, the upstream sees nothing more. The wrapped
         * store reads as a remote one would, by a stream the filesystem driver does not offer:
         * there the stored file is checked only. */
        if (variants[v] == 0) {
            client_init(&c);
            client_go(&c, &m);
            run(&m, &c, 1, 50);
            assert_true(c.correct);
        }
        assert_int_equal(atomic_load(&fake.blob_gets), 1);
        mirror_stop(&m);
    }
}

static void test_join_and_late_join(void **state)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        atomic_store(&fake.delay_us, 10000); /* ~0.5 s for the whole blob */
        mirror_start(&m, variants[v], 64);
        struct client cs[6];
        for (size_t i = 0; i < 6; i++) {
            client_init(&cs[i]);
            cs[i].start_after_ms = i < 3 ? 0 : 40 + 20 * (int)i; /* late joiners */
        }
        cs[2].range = "bytes=1000-99999";
        cs[5].range = "bytes=3000000-";
        for (size_t i = 0; i < 6; i++)
            client_go(&cs[i], &m);
        run(&m, cs, 6, 200);
        for (size_t i = 0; i < 6; i++) {
            assert_int_equal(cs[i].status, cs[i].range ? 206 : 200);
            assert_true(cs[i].correct);
        }
        assert_int_equal(atomic_load(&fake.blob_gets), 1);
        assert_true(blob_stored(&m));
        mirror_stop(&m);
    }
}

static void test_slow_reader(void **state)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        mirror_start(&m, variants[v], 64);
        struct client cs[2];
        client_init(&cs[0]);
        client_init(&cs[1]);
        atomic_store(&fake.delay_us, 2000); /* ~0.1 s: both join */
        cs[0].read_delay_us = 4000;         /* ~0.8 s: the fetch ends long before */
        client_go(&cs[0], &m);
        client_go(&cs[1], &m);
        run(&m, cs, 2, 100);
        assert_true(cs[0].correct);
        assert_true(cs[1].correct);
        assert_int_equal(atomic_load(&fake.blob_gets), 1);
        assert_true(blob_stored(&m));
        mirror_stop(&m);
    }
}

/* A cut or corrupted upstream body: nothing stored, no client gets a complete-looking answer
 * with wrong bytes, and the next request fetches again. */
static void bad_body(long cut, long corrupt)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        atomic_store(&fake.cut_after, cut);
        atomic_store(&fake.corrupt_at, corrupt);
        atomic_store(&fake.faults, 1);
        atomic_store(&fake.delay_us, 5000); /* the cut comes ~0.12 s in: all have joined */
        mirror_start(&m, variants[v], 64);
        struct client cs[3];
        for (size_t i = 0; i < 3; i++) {
            client_init(&cs[i]);
            cs[i].start_after_ms = 10 * (int)i;
        }
        for (size_t i = 0; i < 3; i++)
            client_go(&cs[i], &m);
        run(&m, cs, 3, 100);
        for (size_t i = 0; i < 3; i++)
            assert_false(cs[i].status == 200 && cs[i].complete);
        assert_false(blob_stored(&m));
        struct client c;
        client_init(&c);
        client_go(&c, &m);
        run(&m, &c, 1, 200);
        assert_true(c.correct);
        assert_int_equal(atomic_load(&fake.blob_gets), 2);
        assert_true(blob_stored(&m));
        mirror_stop(&m);
    }
}

static void test_cut(void **state)
{
    bad_body(BLOB_SIZE / 2, -1);
}

static void test_mismatch(void **state)
{
    bad_body(-1, BLOB_SIZE - 10);
}

/* Clients hang up before the answer, mid-body and at once; the fetch goes on for nobody
 * and stores the blob. */
static void test_clients_cancel(void **state)
{
    static const long hangups[] = {0, 1, 100000, 2000000};
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        atomic_store(&fake.delay_us, 5000);
        mirror_start(&m, variants[v], 64);
        struct client cs[4];
        for (size_t i = 0; i < 4; i++) {
            client_init(&cs[i]);
            cs[i].hangup_after = hangups[i];
            cs[i].start_after_ms = 5 * (int)i;
        }
        for (size_t i = 0; i < 4; i++)
            client_go(&cs[i], &m);
        run(&m, cs, 4, 400);
        assert_true(blob_stored(&m));
        assert_int_equal(atomic_load(&fake.blob_gets), 1);
        mirror_stop(&m);
    }
}

/* Clients waiting for a fetch slot (proxy.maxfetches 1, the upstream holding the body)
 * hang up, or stay: the held fetch's clients are served once it is released. */
static void test_cancel_while_held_and_queued(void **state)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        atomic_store(&fake.hold, 1);
        mirror_start(&m, variants[v], 1);
        struct client cs[3];
        for (size_t i = 0; i < 3; i++)
            client_init(&cs[i]);
        cs[1].hangup_after = 0;
        cs[2].hangup_after = 0;
        for (size_t i = 0; i < 3; i++)
            client_go(&cs[i], &m);
        /* Two have hung up; then the upstream sends. */
        while (atomic_load(&clients_running) > 1) {
            event_base_loop(m.base, EVLOOP_NONBLOCK);
            usleep(1000);
        }
        atomic_store(&fake.hold, 0);
        run(&m, cs, 3, 100);
        assert_true(cs[0].correct);
        assert_int_equal(atomic_load(&fake.blob_gets), 1);
        mirror_stop(&m);
    }
}

/* The daemon stops mid-fetch: the server aborts the requests, the proxy cuts the fetch and
 * stores nothing; every client sees a cut, never a complete answer. */
static void test_shutdown_mid_fetch(void **state)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        atomic_store(&fake.delay_us, 20000); /* ~1 s for the whole blob */
        mirror_start(&m, variants[v], 64);
        struct client cs[2];
        client_init(&cs[0]);
        client_init(&cs[1]);
        client_go(&cs[0], &m);
        client_go(&cs[1], &m);
        struct timeval tv = {0, 200000};
        event_base_loopexit(m.base, &tv);
        event_base_dispatch(m.base);
        mirror_stop(&m);
        for (size_t i = 0; i < 2; i++) {
            pthread_join(cs[i].thread, NULL);
            assert_false(cs[i].complete);
        }
        atomic_store(&fake.delay_us, 0);
    }
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(LOG_ERROR, LOG_FORMAT_TEXT);
    blob = malloc(BLOB_SIZE);
    if (!blob)
        return -1;
    for (size_t i = 0; i < BLOB_SIZE; i++)
        blob[i] = (unsigned char)(i * 2654435761u >> 13);
    struct digest d;
    if (digest_compute(DIGEST_SHA256, blob, BLOB_SIZE, &d) != 0)
        return -1;
    digest_str(&d, blob_digest);
    fake.lfd = peer_listen(&fake.port);
    if (fake.lfd < 0)
        return -1;
    /* One connection at a time is enough: the proxy fetches each digest once. Accepts time
     * out so the thread sees stop. */
    struct timeval tv = {0, 100000};
    setsockopt(fake.lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    script_reset();
    return pthread_create(&fake.thread, NULL, fake_thread, NULL);
}

static int teardown(void **state)
{
    atomic_store(&fake.stop, 1);
    pthread_join(fake.thread, NULL);
    close(fake.lfd);
    free(blob);
    log_reset();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_fetch_then_stored),
        cmocka_unit_test(test_join_and_late_join),
        cmocka_unit_test(test_slow_reader),
        cmocka_unit_test(test_cut),
        cmocka_unit_test(test_mismatch),
        cmocka_unit_test(test_clients_cancel),
        cmocka_unit_test(test_cancel_while_held_and_queued),
        cmocka_unit_test(test_shutdown_mid_fetch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
