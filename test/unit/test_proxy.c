/*
 * test_proxy: blob fetches through the proxy, in process. The daemon's parts run on this
 * thread's loop (server, proxy, upstream client, a filesystem store in a temporary
 * directory); a fake upstream registry answers on a thread of its own with scripted faults
 * (held, slow, cut or corrupted bodies), and clients on threads read at their own pace or
 * hang up. Every scenario runs with storage work inline on a local store (the filesystem
 * path) and on worker threads with the store wrapped as remote, so blobs are spooled apart and
 * imported (the OSS path); the scenarios of the import itself run on the latter only. The test's
 * wrap of the store holds chosen calls (a lookup, an import) until a scenario lets them go, and
 * streams stored blobs to GETs as a remote store would. ASan and LeakSanitizer check the
 * lifetimes: every party cancelled at every step leaves nothing behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
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
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "digest.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
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
/* The upstream's blobs: the main one (BLOB_SIZE), a second digest, and one too big for any
 * socket buffers to hold (a pausing client fixes its receive buffer; the mirror queues at most
 * PUMP_HIGH, 1 MiB, and its send buffer, at most net.ipv4.tcp_wmem's 4 MiB), so a client that
 * stops reading keeps its request open. */
#define MAIN 0
#define SECOND 1
#define BIG 2
#define NBLOBS 3
/* Retry-After of a request that waited too long for a fetch slot (QUEUE_RETRY_AFTER_S). */
#define QUEUE_RETRY_AFTER "5"

/* ---- the fake upstream ---- */

struct fake {
    int lfd;
    int port;
    pthread_t thread;
    atomic_int stop;
    /* script_reset bumps epoch; the fake sets quiet to it once nothing came for an accept's
     * timeout, so what a stopped mirror left in its backlog is not counted for the next. */
    atomic_int epoch, quiet;
    atomic_int blob_gets;    /* of any blob */
    atomic_int gets[NBLOBS]; /* of each */
    /* the script of the next blob GETs */
    atomic_int hold;        /* the body waits until released */
    atomic_int delay_us;    /* between 64 KiB pieces */
    atomic_long cut_after;  /* close after this many body bytes (-1: never) */
    atomic_long corrupt_at; /* flip this byte (-1: none) */
    atomic_int faults;      /* how many GETs the cut/corrupt apply to */
};

struct tblob {
    unsigned char *data;
    size_t size;
    struct digest d;
    char digest[DIGEST_STR_MAX];
};

static struct tblob blobs[NBLOBS];
static struct fake fake;

static int blob_of_path(const char *path)
{
    for (int i = 0; i < NBLOBS; i++) {
        if (strstr(path, blobs[i].digest))
            return i;
    }
    return -1;
}

static void fake_answer(int fd)
{
    char req[4096] = ""; /* empty: what the last call read is no request of this one */
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
    int which = blob_of_path(path);
    if (!strstr(path, "/blobs/") || which < 0) {
        const char *nf = "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n"
                         "Content-Type: application/json\r\n\r\n{}";
        if (strcmp(path, "/v2/") == 0)
            nf = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        peer_send_all(fd, nf, strlen(nf));
        return;
    }
    const struct tblob *b = &blobs[which];
    int len = snprintf(hdr, sizeof(hdr),
                       "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nDocker-Content-Digest: %s\r\n"
                       "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                       b->size, b->digest);
    peer_send_all(fd, hdr, (size_t)len);
    if (head)
        return;
    atomic_fetch_add(&fake.blob_gets, 1);
    atomic_fetch_add(&fake.gets[which], 1);
    bool faulty = atomic_load(&fake.faults) > 0 && atomic_fetch_sub(&fake.faults, 1) > 0;
    long cut = faulty ? atomic_load(&fake.cut_after) : -1;
    long corrupt = faulty ? atomic_load(&fake.corrupt_at) : -1;
    while (atomic_load(&fake.hold) && !atomic_load(&fake.stop))
        usleep(1000);
    unsigned char piece[64 * 1024];
    for (size_t off = 0; off < b->size && !atomic_load(&fake.stop);) {
        size_t k = b->size - off < sizeof(piece) ? b->size - off : sizeof(piece);
        if (cut >= 0 && off + k > (size_t)cut)
            k = (size_t)cut - off;
        memcpy(piece, b->data + off, k);
        if (corrupt >= 0 && (size_t)corrupt >= off && (size_t)corrupt < off + k)
            piece[corrupt - (long)off] ^= 0xff;
        if (!peer_send_all(fd, piece, k))
            return;
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
        int epoch = atomic_load(&fake.epoch);
        int fd = accept(fake.lfd, NULL, NULL);
        if (fd < 0) {
            atomic_store(&fake.quiet, epoch);
            continue;
        }
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

/* ---- the remote store's calls, held where a scenario needs them ---- */

/*
 * A gate holds the store's calls on a path containing match on the worker thread that makes
 * them, from when it is armed until it is opened; entered counts the calls it caught.
 */
struct gate {
    atomic_int armed, entered, open;
    const char *match;
};

static struct gate import_gate; /* a blob's import: the writer of its data */
static struct gate lookup_gate; /* a lookup: the link and the data */
static atomic_int imports_started;

static void gate_arm(struct gate *g, const struct tblob *b)
{
    g->match = b->digest + 7;
    atomic_store(&g->armed, 1);
}

static void gate_reset(struct gate *g)
{
    atomic_store(&g->armed, 0);
    atomic_store(&g->entered, 0);
    atomic_store(&g->open, 0);
}

static void gate_pass(struct gate *g, const char *path)
{
    if (!atomic_load(&g->armed) || !strstr(path, g->match))
        return;
    atomic_fetch_add(&g->entered, 1);
    while (!atomic_load(&g->open))
        usleep(1000);
}

static enum regerr w_get_content(struct storage *s, const char *path, size_t max, char **out,
                                 size_t *len)
{
    gate_pass(&lookup_gate, path);
    return storage_get_content(storage_wrap_inner(s), path, max, out, len);
}

static enum regerr w_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    gate_pass(&lookup_gate, path);
    return storage_stat(storage_wrap_inner(s), path, out);
}

static enum regerr w_open_writer(struct storage *s, const char *path, bool append,
                                 struct storage_writer **out)
{
    if (strstr(path, "/blobs/")) { /* only an import writes blob data into this store */
        atomic_fetch_add(&imports_started, 1);
        gate_pass(&import_gate, path);
    }
    return storage_open_writer(storage_wrap_inner(s), path, append, out);
}

/* A remote store streams a stored blob to a GET; the filesystem driver has no such read. */
static enum regerr w_read_range(struct storage *s, const char *path, uint64_t off, uint64_t len,
                                storage_read_cb cb, void *ctx)
{
    int fd;
    uint64_t size;
    enum regerr result = storage_open_read(storage_wrap_inner(s), path, &fd, &size);
    if (result != REG_OK)
        return result;
    uint64_t end = len && off + len < size ? off + len : size;
    char piece[64 * 1024];
    while (result == REG_OK && off < end) {
        size_t want = end - off < sizeof(piece) ? (size_t)(end - off) : sizeof(piece);
        ssize_t k = pread(fd, piece, want, (off_t)off);
        if (k <= 0 || cb(ctx, piece, (size_t)k) != 0)
            result = REG_ERR_INTERNAL;
        off += k > 0 ? (uint64_t)k : 0;
    }
    close(fd);
    return result;
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

static void mirror_start_queue(struct mirror *m, unsigned threads, int maxfetches,
                               const char *queue_timeout)
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
             "  maxfetches: %d\n  fetchqueuetimeout: %s\n",
             m->root, m->port, fake.port, m->root, maxfetches, queue_timeout);
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
        static const struct storage_ops over = {
            .get_content = w_get_content, .stat = w_stat, .open_writer = w_open_writer};
        struct storage_wrap *w = storage_wrap_new(m->st, sizeof(*w), &over, NULL);
        assert_non_null(w);
        w->base.local = false;
        w->ops.read_range = w_read_range;
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

static void mirror_start(struct mirror *m, unsigned threads, int maxfetches)
{
    mirror_start_queue(m, threads, maxfetches, "5s");
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

/* Whether the blob's data is in the store (where "store"), or committed in the spool of a
 * remote store and not imported yet (where "spool"). */
static bool blob_in(const struct mirror *m, const char *where, int which)
{
    const struct tblob *b = &blobs[which];
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s/docker/registry/v2/blobs/sha256/%.2s/%s/data", m->root,
             where, b->digest + 7, b->digest + 7);
    struct stat sb;
    return stat(path, &sb) == 0 && (size_t)sb.st_size == b->size;
}

static bool blob_stored(const struct mirror *m)
{
    return blob_in(m, "store", MAIN);
}

/* ---- clients ---- */

struct client {
    pthread_t thread;
    int port;
    int which;          /* the blob asked for: blobs[which] */
    const char *range;  /* a Range header, or NULL */
    int read_delay_us;  /* between 16 KiB reads: a slow reader */
    long hangup_after;  /* close after this many body bytes (-1: never; 0: before any) */
    int start_after_ms; /* a late joiner */
    /* Stop reading after this many body bytes (0: right after the request; -1: never) until
     * *resume is set; then hang up, or read on. */
    long pause_after;
    atomic_int *resume;
    bool hangup_at_resume;
    atomic_int sent, paused;
    /* results */
    int status;
    long content_length;
    size_t got;
    bool complete;        /* the body is all Content-Length announced */
    bool correct;         /* and it is the blob's bytes (or the range's) */
    char retry_after[16]; /* the Retry-After header's value, or "" */
    char error[64];       /* an error answer's errors[0].code, or "" */
    atomic_int done;
};

static atomic_int clients_running;

/* Waits for *c->resume; whether to hang up then. */
static bool client_pause(struct client *c)
{
    atomic_store(&c->paused, 1);
    while (!atomic_load(c->resume))
        usleep(1000);
    return c->hangup_at_resume;
}

/* The head's value of the header name ("\r\nName: "), or "". */
static void client_header(const char *head, const char *name, char *out, size_t size)
{
    const char *h = strcasestr(head, name);
    size_t n = 0;
    if (h) {
        h += strlen(name);
        while (h[n] && h[n] != '\r' && n + 1 < size)
            n++;
        memcpy(out, h, n);
    }
    out[n] = '\0';
}

static void client_results(struct client *c, unsigned char *buf, size_t len, size_t body_at)
{
    const struct tblob *b = &blobs[c->which];
    buf[body_at - 1] = '\0'; /* the head as a string: its last \n goes */
    sscanf((char *)buf, "HTTP/1.1 %d", &c->status);
    char cl[32];
    client_header((char *)buf, "\r\nContent-Length: ", cl, sizeof(cl));
    if (cl[0])
        c->content_length = strtol(cl, NULL, 10);
    client_header((char *)buf, "\r\nRetry-After: ", c->retry_after, sizeof(c->retry_after));
    buf[body_at - 1] = '\n';
    c->got = len - body_at;
    c->complete = c->content_length >= 0 && c->got == (size_t)c->content_length;
    size_t from = 0;
    if (c->range)
        sscanf(c->range, "bytes=%zu", &from);
    c->correct = c->complete && from + c->got <= b->size &&
                 memcmp(buf + body_at, b->data + from, c->got) == 0;
    if (c->status >= 400 && c->complete) {
        json_t *j = json_loadb((char *)buf + body_at, c->got, 0, NULL);
        const char *code = json_string_value(
            json_object_get(json_array_get(json_object_get(j, "errors"), 0), "code"));
        snprintf(c->error, sizeof(c->error), "%s", code ? code : "");
        json_decref(j);
    }
}

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
    if (c->pause_after > 0) {
        /* A fixed receive buffer (no autotuning): what it and the mirror's socket can hold
         * stays far below BIG's size. */
        int rcvbuf = 128 * 1024;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    }
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        goto out;
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET /v2/" NAME "/blobs/%s HTTP/1.1\r\nHost: mirror\r\n%s%s%s"
                     "Connection: close\r\n\r\n",
                     blobs[c->which].digest, c->range ? "Range: " : "", c->range ? c->range : "",
                     c->range ? "\r\n" : "");
    peer_send_all(fd, req, (size_t)n);
    atomic_store(&c->sent, 1);
    if (c->hangup_after == 0 || (c->pause_after == 0 && client_pause(c)))
        goto out;
    size_t cap = blobs[c->which].size + 65536, len = 0;
    unsigned char *buf = malloc(cap);
    size_t body_at = 0;
    bool paused = false;
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
        if (body_at && c->pause_after > 0 && !paused && len - body_at >= (size_t)c->pause_after) {
            paused = true;
            if (client_pause(c))
                break;
        }
        if (c->read_delay_us)
            usleep((useconds_t)c->read_delay_us);
    }
    if (body_at)
        client_results(c, buf, len, body_at);
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
    c->pause_after = -1;
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

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop for a millisecond at most; a scenario waiting past until has hung. */
static void loop_step(struct mirror *m, int64_t until)
{
    assert_true(mono_ms() < until);
    struct timeval tv = {0, 1000};
    event_base_loopexit(m->base, &tv);
    event_base_dispatch(m->base);
}

/* Runs the loop until cond holds (cond reads what the loop and the clients change). */
#define LOOP_UNTIL(m, cond)                                                                        \
    for (int64_t until_ = mono_ms() + 30000; !(cond);)                                             \
    loop_step((m), until_)

/* Waits, without the loop, for what the clients do on their own. */
static void wait_step(int64_t until)
{
    assert_true(mono_ms() < until);
    usleep(1000);
}

#define WAIT_UNTIL(cond)                                                                           \
    for (int64_t until_ = mono_ms() + 30000; !(cond);)                                             \
    wait_step(until_)

/* Blob GETs the server has ended, answered or aborted (regmirror_http_requests_total). */
static uint64_t blob_gets_ended(void)
{
    static const char key[] = "regmirror_http_requests_total{route=\"blob\",method=\"GET\",";
    struct evbuffer *out = evbuffer_new();
    assert_non_null(out);
    metrics_render(out);
    size_t len = evbuffer_get_length(out);
    char *text = malloc(len + 1);
    assert_non_null(text);
    evbuffer_remove(out, text, len);
    text[len] = '\0';
    evbuffer_free(out);
    uint64_t n = 0;
    for (const char *p = strstr(text, key); p; p = strstr(p + 1, key))
        n += strtoull(strchr(p, '}') + 1, NULL, 10);
    free(text);
    return n;
}

static void script_reset(void)
{
    atomic_store(&fake.hold, 0);
    atomic_store(&fake.delay_us, 0);
    int epoch = atomic_fetch_add(&fake.epoch, 1) + 1;
    while (atomic_load(&fake.quiet) < epoch)
        usleep(1000);
    atomic_store(&fake.blob_gets, 0);
    for (unsigned n = 0; n < NBLOBS; n++)
        atomic_store(&fake.gets[n], 0);
    gate_reset(&import_gate);
    gate_reset(&lookup_gate);
    atomic_store(&imports_started, 0);
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

/* A Range far beyond the spool asks the upstream for it on a side fetch; an upstream that
 * answers with the whole blob (200) is not used for it: the client gets its 206 from the
 * one fetch, which is stored as usual. */
static void test_range_ignored_upstream(void **state)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        mirror_start(&m, variants[v], 64);
        struct client c;
        client_init(&c);
        c.which = BIG;
        c.range = "bytes=12000000-";
        client_go(&c, &m);
        run(&m, &c, 1, 200);
        assert_int_equal(c.status, 206);
        assert_int_equal(c.content_length, (long)blobs[BIG].size - 12000000);
        assert_true(c.correct);
        LOOP_UNTIL(&m, !proxy_busy(m.px, &blobs[BIG].d));
        assert_true(blob_in(&m, "store", BIG));
        assert_int_equal(atomic_load(&fake.gets[BIG]), 2); /* the refused one, the fetch */
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

static void client_wait(struct mirror *m, struct client *c)
{
    LOOP_UNTIL(m, atomic_load(&c->done));
    pthread_join(c->thread, NULL);
}

/* A GET of a blob fetched before: from the store, with no upstream GET. */
static void served_from_store(struct mirror *m, int which)
{
    int gets = atomic_load(&fake.gets[which]);
    struct client c;
    client_init(&c);
    c.which = which;
    client_go(&c, m);
    client_wait(m, &c);
    assert_int_equal(c.status, 200);
    assert_true(c.correct);
    assert_int_equal(atomic_load(&fake.gets[which]), gets);
}

/*
 * proxy.maxfetches 1, its slot held by a fetch whose upstream body waits: fetches of another
 * digest queue. A waiter that hangs up leaves the queue at once (alone on its fetch, the
 * fetch goes too; with others, only its reader); those that stay get 503 with Retry-After
 * and the registry's error once proxy.fetchqueuetimeout passes. The held fetch is unaffected, and
 * the queued digest is fetched by the next request.
 */
static void test_queue_timeout(void **state)
{
    for (size_t v = 0; v < 2; v++) {
        struct mirror m;
        script_reset();
        atomic_store(&fake.hold, 1);
        mirror_start_queue(&m, variants[v], 1, "1s");
        uint64_t queued = metrics_counters[METRICS_FETCHES_QUEUED];
        uint64_t timeouts = metrics_counters[METRICS_FETCH_QUEUE_TIMEOUTS];
        uint64_t joined = metrics_counters[METRICS_JOINED_WAITERS];
        uint64_t ended = blob_gets_ended();
        struct client first;
        client_init(&first);
        client_go(&first, &m);
        LOOP_UNTIL(&m, atomic_load(&fake.gets[MAIN]) == 1); /* it holds the slot */

        atomic_int hangup = 0;
        struct client quitter;
        client_init(&quitter);
        quitter.which = SECOND;
        quitter.pause_after = 0;
        quitter.resume = &hangup;
        quitter.hangup_at_resume = true;
        client_go(&quitter, &m);
        LOOP_UNTIL(&m, metrics_counters[METRICS_FETCHES_QUEUED] == queued + 1);
        assert_true(proxy_busy(m.px, &blobs[SECOND].d));
        atomic_store(&hangup, 1);
        LOOP_UNTIL(&m, blob_gets_ended() == ended + 1);
        pthread_join(quitter.thread, NULL);
        assert_false(proxy_busy(m.px, &blobs[SECOND].d));
        assert_int_equal(metrics_counters[METRICS_FETCH_QUEUE_TIMEOUTS], timeouts);

        /* All four are in before the loop runs again: they wait on one queued fetch. The
         * last hangs up while the others stay. */
        struct client cs[4];
        for (size_t i = 0; i < 4; i++) {
            client_init(&cs[i]);
            cs[i].which = SECOND;
        }
        cs[3].pause_after = 0;
        cs[3].resume = &hangup;
        cs[3].hangup_at_resume = true;
        atomic_store(&hangup, 0);
        for (size_t i = 0; i < 4; i++)
            client_go(&cs[i], &m);
        WAIT_UNTIL(atomic_load(&cs[0].sent) && atomic_load(&cs[1].sent) &&
                   atomic_load(&cs[2].sent) && atomic_load(&cs[3].sent));
        LOOP_UNTIL(&m, metrics_counters[METRICS_JOINED_WAITERS] == joined + 3);
        atomic_store(&hangup, 1);
        LOOP_UNTIL(&m, blob_gets_ended() == ended + 2);
        pthread_join(cs[3].thread, NULL);
        assert_int_equal(metrics_counters[METRICS_FETCH_QUEUE_TIMEOUTS], timeouts);
        assert_true(proxy_busy(m.px, &blobs[SECOND].d));
        for (size_t i = 0; i < 3; i++) {
            client_wait(&m, &cs[i]);
            assert_int_equal(cs[i].status, 503);
            assert_string_equal(cs[i].retry_after, QUEUE_RETRY_AFTER);
            assert_string_equal(cs[i].error, "UNAVAILABLE");
        }
        assert_int_equal(metrics_counters[METRICS_FETCH_QUEUE_TIMEOUTS], timeouts + 1);
        assert_int_equal(metrics_counters[METRICS_JOINED_WAITERS], joined + 3);
        assert_int_equal(atomic_load(&fake.gets[SECOND]), 0);
        assert_false(atomic_load(&first.done));

        atomic_store(&fake.hold, 0);
        client_wait(&m, &first);
        assert_int_equal(first.status, 200);
        assert_true(first.correct);
        LOOP_UNTIL(&m, !proxy_busy(m.px, &blobs[MAIN].d));
        assert_true(blob_in(&m, "store", MAIN));

        struct client again;
        client_init(&again);
        again.which = SECOND;
        client_go(&again, &m);
        client_wait(&m, &again);
        assert_int_equal(again.status, 200);
        assert_true(again.correct);
        LOOP_UNTIL(&m, !proxy_busy(m.px, &blobs[SECOND].d));
        assert_true(blob_in(&m, "store", SECOND));
        assert_int_equal(atomic_load(&fake.gets[MAIN]), 1);
        assert_int_equal(atomic_load(&fake.gets[SECOND]), 1);
        mirror_stop(&m);
    }
}

/*
 * Remote store: the fetch is verified and its import into the store runs (held in the
 * store's writer) when the clients hang up, every one of them or one of two; the other reads
 * all of the spool meanwhile. The import completes, the blob is stored and served from there.
 * The filesystem store commits on the loop, with nothing in between to hang up during.
 */
static void test_hangup_during_import(void **state)
{
    for (int all = 1; all >= 0; all--) {
        struct mirror m;
        script_reset();
        gate_arm(&import_gate, &blobs[BIG]);
        mirror_start(&m, 2, 64);
        uint64_t ended = blob_gets_ended();
        atomic_int resume = 0;
        struct client cs[2];
        for (size_t i = 0; i < 2; i++) {
            client_init(&cs[i]);
            cs[i].which = BIG;
            cs[i].pause_after = 65536;
            cs[i].resume = &resume;
            cs[i].hangup_at_resume = all || i == 0;
            client_go(&cs[i], &m);
        }
        LOOP_UNTIL(&m, atomic_load(&import_gate.entered) == 1);
        assert_int_equal(blob_gets_ended(), ended); /* both requests are still on */
        atomic_store(&resume, 1);
        LOOP_UNTIL(&m, atomic_load(&cs[0].done) && atomic_load(&cs[1].done) &&
                           blob_gets_ended() == ended + 2);
        pthread_join(cs[0].thread, NULL);
        pthread_join(cs[1].thread, NULL);
        assert_false(cs[0].complete);
        if (!all) {
            assert_int_equal(cs[1].status, 200);
            assert_true(cs[1].correct);
        }
        assert_true(proxy_busy(m.px, &blobs[BIG].d));
        assert_false(blob_in(&m, "store", BIG));
        atomic_store(&import_gate.open, 1);
        LOOP_UNTIL(&m, !proxy_busy(m.px, &blobs[BIG].d));
        assert_true(blob_in(&m, "store", BIG));
        assert_false(blob_in(&m, "spool", BIG));
        served_from_store(&m, BIG);
        assert_int_equal(atomic_load(&fake.gets[BIG]), 1);
        assert_int_equal(atomic_load(&imports_started), 1);
        mirror_stop(&m);
    }
}

/*
 * Remote store, the import queued behind two lookups that hold both workers (held in the
 * store): the clients hang up before it starts, every one or one of two (the other reads all
 * of the spool meanwhile). It runs once the lookups go on, and the lookups' own fetch is
 * served too.
 */
static void test_hangup_while_import_queued(void **state)
{
    for (int all = 1; all >= 0; all--) {
        struct mirror m;
        script_reset();
        atomic_store(&fake.hold, 1);
        mirror_start(&m, 2, 64);
        uint64_t ended = blob_gets_ended();
        atomic_int hangup = 0;
        struct client cs[2];
        for (size_t i = 0; i < 2; i++) {
            client_init(&cs[i]);
            cs[i].which = BIG;
            cs[i].pause_after = 65536;
            cs[i].resume = &hangup;
            cs[i].hangup_at_resume = all || i == 0;
            client_go(&cs[i], &m);
        }
        LOOP_UNTIL(&m, atomic_load(&fake.gets[BIG]) == 1);
        gate_arm(&lookup_gate, &blobs[SECOND]);
        struct client ls[2];
        for (size_t i = 0; i < 2; i++) {
            client_init(&ls[i]);
            ls[i].which = SECOND;
            client_go(&ls[i], &m);
        }
        LOOP_UNTIL(&m, atomic_load(&lookup_gate.entered) == 2); /* both workers are held */
        atomic_store(&fake.hold, 0);
        /* Verified into the spool: the import is queued. */
        LOOP_UNTIL(&m, blob_in(&m, "spool", BIG) && atomic_load(&cs[0].paused) &&
                           atomic_load(&cs[1].paused));
        atomic_store(&hangup, 1);
        LOOP_UNTIL(&m, blob_gets_ended() == ended + 2);
        assert_int_equal(atomic_load(&imports_started), 0);
        assert_true(proxy_busy(m.px, &blobs[BIG].d));
        atomic_store(&lookup_gate.open, 1);
        for (size_t i = 0; i < 2; i++) {
            pthread_join(cs[i].thread, NULL);
            assert_true(i == 1 && !all ? cs[i].correct : !cs[i].complete);
            client_wait(&m, &ls[i]);
            assert_int_equal(ls[i].status, 200);
            assert_true(ls[i].correct);
        }
        LOOP_UNTIL(&m, !proxy_busy(m.px, &blobs[BIG].d) && !proxy_busy(m.px, &blobs[SECOND].d));
        assert_true(blob_in(&m, "store", BIG));
        assert_true(blob_in(&m, "store", SECOND));
        assert_int_equal(atomic_load(&imports_started), 2);
        served_from_store(&m, BIG);
        assert_int_equal(atomic_load(&fake.gets[BIG]), 1);
        assert_int_equal(atomic_load(&fake.gets[SECOND]), 1);
        mirror_stop(&m);
    }
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(LOG_ERROR, LOG_FORMAT_TEXT);
    static const size_t sizes[NBLOBS] = {BLOB_SIZE, 256 * 1024 + 5, 12u * 1024 * 1024 + 3};
    for (unsigned n = 0; n < NBLOBS; n++) {
        struct tblob *b = &blobs[n];
        b->size = sizes[n];
        b->data = malloc(b->size);
        if (!b->data)
            return -1;
        for (size_t i = 0; i < b->size; i++)
            b->data[i] = (unsigned char)((i + n) * 2654435761u >> (13 + n));
        if (digest_compute(DIGEST_SHA256, b->data, b->size, &b->d) != 0)
            return -1;
        digest_str(&b->d, b->digest);
    }
    fake.lfd = peer_listen(&fake.port);
    if (fake.lfd < 0)
        return -1;
    /* One connection at a time is enough: the proxy fetches each digest once. Accepts time
     * out so the thread sees stop. */
    struct timeval tv = {0, 100000};
    setsockopt(fake.lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (pthread_create(&fake.thread, NULL, fake_thread, NULL) != 0)
        return -1;
    script_reset();
    return 0;
}

static int teardown(void **state)
{
    atomic_store(&fake.stop, 1);
    pthread_join(fake.thread, NULL);
    close(fake.lfd);
    for (unsigned n = 0; n < NBLOBS; n++)
        free(blobs[n].data);
    log_reset();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_fetch_then_stored),
        cmocka_unit_test(test_join_and_late_join),
        cmocka_unit_test(test_range_ignored_upstream),
        cmocka_unit_test(test_slow_reader),
        cmocka_unit_test(test_cut),
        cmocka_unit_test(test_mismatch),
        cmocka_unit_test(test_clients_cancel),
        cmocka_unit_test(test_cancel_while_held_and_queued),
        cmocka_unit_test(test_shutdown_mid_fetch),
        cmocka_unit_test(test_queue_timeout),
        cmocka_unit_test(test_hangup_during_import),
        cmocka_unit_test(test_hangup_while_import_queued),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
