/*
 * bget: the benchmark's HTTP/1.1 download client.
 *
 * Opens CONNS keep-alive connections to one loopback server and sends REQUESTS requests in
 * all over them (each connection asks again as soon as its previous answer is complete), on
 * one epoll loop, reading bodies into a 1 MB buffer. Bodies can be hashed (-s) and checked
 * against a digest (-e). Prints one JSON object on stdout:
 *
 *   {"wall": s, "bytes": n, "errors": n, "requests": [
 *      {"conn": i, "status": 200, "bytes": n, "ttfb": s, "time": s, "sha256": "sha256:..."}]}
 *
 * With -r NAME each request also gets "header": the value of that response header ("" when the
 * answer had none), e.g. the node behind a load balancer that names it.
 *
 * With -d SECONDS it keeps asking for that long instead of -n times, and -q prints only a
 * summary: {"requests", "rate", "p50", "p99" (seconds, of every finished request), "non2xx",
 * "failed", "errors", "timed_out", "wall", "bytes"}.
 *
 * ttfb is from sending the request to the first body byte (the end of the head for bodiless
 * answers); time is from sending to the last byte. Exit status: 0 when every request got a
 * complete 2xx answer (and the digest, with -e), 1 otherwise, 2 on bad usage. The whole run
 * stops after -t seconds (default 120) whatever happens, so the harness never hangs.
 *
 * Only what the benchmark needs: http://HOST:PORT/PATH, Content-Length or chunked bodies.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (1 << 20)
#define HEAD_MAX 16384
#define MAX_HEADERS 16

enum phase {
    P_CONNECT,
    P_SEND,
    P_HEAD,
    P_BODY,
    P_CHUNK_SIZE,
    P_CHUNK_DATA,
    P_CHUNK_CRLF,
    P_TRAILER,
    P_DONE
};

struct result {
    int conn, status;
    uint64_t bytes;
    double ttfb, time;
    char sha[72];
    char header[64];
};

struct conn {
    int id, fd;
    enum phase phase;
    size_t sent;
    char head[HEAD_MAX];
    size_t head_len;
    int status;
    bool chunked, close_after, want_out;
    uint64_t left, body;
    double t0, t1;
    EVP_MD_CTX *md;
    char line[64];
    size_t line_len;
    char header[64];
};

static struct sockaddr_in g_addr;
static char g_req[8192];
static size_t g_req_len;
static bool g_hash, g_head;
static const char *g_expect;
static const char *g_record; /* -r: the response header recorded per request */
static int g_total, g_started, g_finished, g_errors, g_cap;
static double g_until; /* -d: no new request after this time (0: count mode) */
static struct result *g_results;
static int g_epfd;
static unsigned char g_rbuf[RBUF_SIZE];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int conn_open(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&g_addr, sizeof(g_addr)) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = true;
    c->phase = P_CONNECT;
    return 0;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

static void conn_fail(struct conn *c);

/* Sends what is left of the request; waits for EPOLLOUT only when the socket is full. */
static void conn_send(struct conn *c)
{
    while (c->sent < g_req_len) {
        ssize_t w = send(c->fd, g_req + c->sent, g_req_len - c->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN) {
                conn_fail(c);
                return;
            }
            if (!c->want_out) {
                struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
                epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->want_out = true;
            }
            return;
        }
        c->sent += (size_t)w;
    }
    c->phase = P_HEAD;
    if (c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = false;
    }
}

/* Starts the next request on c, or closes c when every request has been started. */
static void conn_next(struct conn *c)
{
    if (g_started >= g_total || (g_until && now() >= g_until)) {
        conn_close(c);
        c->phase = P_DONE;
        return;
    }
    g_started++;
    c->sent = 0;
    c->head_len = 0;
    c->status = 0;
    c->chunked = c->close_after = false;
    c->left = c->body = 0;
    c->t0 = now();
    c->t1 = 0;
    c->line_len = 0;
    c->header[0] = 0;
    if (g_hash)
        EVP_DigestInit_ex(c->md, EVP_sha256(), NULL);
    if (c->fd < 0 && conn_open(c) < 0) {
        g_errors++;
        g_finished++;
        c->phase = P_DONE;
        return;
    }
    if (c->phase != P_CONNECT) {
        c->phase = P_SEND;
        conn_send(c); /* a kept-alive connection is writable: no epoll round */
    }
}

static void record(struct conn *c, bool complete)
{
    double t = now();
    if (g_finished == g_cap) {
        g_cap *= 2;
        g_results = realloc(g_results, (size_t)g_cap * sizeof(*g_results));
        if (!g_results)
            abort();
    }
    struct result *r = &g_results[g_finished++];
    r->conn = c->id;
    r->status = complete ? c->status : 0;
    r->bytes = c->body;
    r->ttfb = c->t1 ? c->t1 - c->t0 : -1;
    r->time = t - c->t0;
    r->sha[0] = 0;
    memcpy(r->header, c->header, sizeof(r->header));
    if (g_hash && complete) {
        unsigned char md[32];
        unsigned int n = 0;
        EVP_DigestFinal_ex(c->md, md, &n);
        static const char hex[] = "0123456789abcdef";
        memcpy(r->sha, "sha256:", 7);
        for (unsigned int i = 0; i < n; i++) {
            r->sha[7 + 2 * i] = hex[md[i] >> 4];
            r->sha[8 + 2 * i] = hex[md[i] & 15];
        }
        r->sha[7 + 2 * n] = 0;
    }
    if (!complete || c->status < 200 || c->status > 299 ||
        (g_expect && strcmp(r->sha, g_expect) != 0))
        g_errors++;
}

static void body_bytes(struct conn *c, const unsigned char *p, size_t n)
{
    if (n && !c->t1)
        c->t1 = now();
    c->body += n;
    if (g_hash)
        EVP_DigestUpdate(c->md, p, n);
}

static void answer_done(struct conn *c)
{
    record(c, true);
    if (c->close_after)
        conn_close(c);
    conn_next(c);
}

/* Parses the head in c->head (NUL-terminated). Returns 0, or -1 when it is unusable. */
static int parse_head(struct conn *c)
{
    char *save = NULL;
    char *line = strtok_r(c->head, "\r\n", &save);
    if (!line || strncmp(line, "HTTP/1.", 7) != 0 || strlen(line) < 12)
        return -1;
    c->status = atoi(line + 9);
    bool have_len = false;
    while ((line = strtok_r(NULL, "\r\n", &save))) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (!strcasecmp(line, "Content-Length")) {
            c->left = strtoull(v, NULL, 10);
            have_len = true;
        } else if (!strcasecmp(line, "Transfer-Encoding") && strcasestr(v, "chunked")) {
            c->chunked = true;
        } else if (!strcasecmp(line, "Connection") && strcasestr(v, "close")) {
            c->close_after = true;
        }
        if (g_record && !strcasecmp(line, g_record)) {
            size_t k = 0;
            for (; v[k] && k < sizeof(c->header) - 1; k++) /* kept JSON-safe */
                c->header[k] =
                    v[k] == '"' || v[k] == '\\' || (unsigned char)v[k] < 0x20 ? '?' : v[k];
            c->header[k] = 0;
        }
    }
    if (g_head || c->status == 204 || c->status == 304) {
        c->phase = P_DONE;
        return 0;
    }
    if (c->chunked)
        c->phase = P_CHUNK_SIZE;
    else if (have_len)
        c->phase = P_BODY;
    else
        return -1; /* close-delimited bodies are not needed here */
    return 0;
}

/* Feeds body bytes through the framing. Returns bytes used; sets phase P_DONE at the end. */
static size_t feed(struct conn *c, const unsigned char *p, size_t n)
{
    size_t used = 0;
    while (used < n && c->phase != P_DONE) {
        switch (c->phase) {
        case P_BODY: {
            size_t k = n - used < c->left ? n - used : c->left;
            body_bytes(c, p + used, k);
            used += k;
            c->left -= k;
            if (!c->left)
                c->phase = P_DONE;
            break;
        }
        case P_CHUNK_SIZE:
        case P_CHUNK_CRLF:
        case P_TRAILER: {
            char ch = (char)p[used++];
            if (ch != '\n') {
                if (c->line_len < sizeof(c->line) - 1)
                    c->line[c->line_len++] = ch;
                break;
            }
            c->line[c->line_len] = 0;
            size_t len = c->line_len;
            c->line_len = 0;
            if (c->phase == P_CHUNK_CRLF) {
                c->phase = P_CHUNK_SIZE;
            } else if (c->phase == P_TRAILER) {
                if (len <= 1)
                    c->phase = P_DONE;
            } else {
                c->left = strtoull(c->line, NULL, 16);
                c->phase = c->left ? P_CHUNK_DATA : P_TRAILER;
            }
            break;
        }
        case P_CHUNK_DATA: {
            size_t k = n - used < c->left ? n - used : c->left;
            body_bytes(c, p + used, k);
            used += k;
            c->left -= k;
            if (!c->left)
                c->phase = P_CHUNK_CRLF;
            break;
        }
        default:
            return used;
        }
    }
    return used;
}

static void conn_fail(struct conn *c)
{
    record(c, false);
    conn_close(c);
    conn_next(c);
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->fd < 0) /* closed earlier in this batch of events */
        return;
    if (c->phase == P_CONNECT) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            conn_fail(c);
            return;
        }
        c->phase = P_SEND;
    }
    if (c->phase == P_SEND) {
        conn_send(c);
        if (c->fd < 0 || c->phase != P_HEAD)
            return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ssize_t r = recv(c->fd, g_rbuf, sizeof(g_rbuf), 0);
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            conn_fail(c);
            return;
        }
        size_t off = 0, n = (size_t)r;
        if (c->phase == P_HEAD) {
            size_t room = HEAD_MAX - 1 - c->head_len;
            size_t k = n < room ? n : room;
            memcpy(c->head + c->head_len, g_rbuf, k);
            size_t old = c->head_len;
            c->head_len += k;
            c->head[c->head_len] = 0;
            char *end = strstr(c->head, "\r\n\r\n");
            if (!end) {
                if (c->head_len >= HEAD_MAX - 1) {
                    conn_fail(c);
                    return;
                }
                continue;
            }
            size_t head_size = (size_t)(end - c->head) + 4;
            off = head_size - old;
            end[2] = 0;
            if (parse_head(c) < 0) {
                conn_fail(c);
                return;
            }
            if (c->phase == P_DONE)
                c->t1 = now();
        }
        off += feed(c, g_rbuf + off, n - off);
        if (c->phase == P_DONE) {
            if (off < n) { /* bytes past the answer: the benchmark never pipelines */
                conn_fail(c);
                return;
            }
            answer_done(c);
            return;
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bget [-c CONNS] [-n REQUESTS] [-I] [-H 'Name: value']... [-s] "
            "[-e DIGEST] [-r HEADER] [-t SECONDS] [-d SECONDS] [-q] http://127.0.0.1:PORT/PATH\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int conns = 1, opt;
    bool summary = false;
    double duration = 0;
    double limit = 120;
    char headers[4096] = "";
    size_t hl = 0;
    g_total = 1;
    while ((opt = getopt(argc, argv, "c:n:IH:se:r:t:d:q")) != -1) {
        switch (opt) {
        case 'c':
            conns = atoi(optarg);
            break;
        case 'n':
            g_total = atoi(optarg);
            break;
        case 'I':
            g_head = true;
            break;
        case 'H':
            hl += (size_t)snprintf(headers + hl, sizeof(headers) - hl, "%s\r\n", optarg);
            if (hl >= sizeof(headers))
                usage();
            break;
        case 's':
            g_hash = true;
            break;
        case 'e':
            g_expect = optarg;
            g_hash = true;
            break;
        case 'r':
            g_record = optarg;
            break;
        case 't':
            limit = atof(optarg);
            break;
        case 'd':
            duration = atof(optarg);
            break;
        case 'q':
            summary = true;
            break;
        default:
            usage();
        }
    }
    if (optind != argc - 1 || conns < 1 || g_total < 1)
        usage();
    char host[64], path[2048];
    int port;
    if (sscanf(argv[optind], "http://%63[^:]:%d%2047s", host, &port, path) != 3)
        usage();
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &g_addr.sin_addr) != 1)
        usage();
    g_req_len = (size_t)snprintf(g_req, sizeof(g_req),
                                 "%s %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: regmirror-bget\r\n"
                                 "%s\r\n",
                                 g_head ? "HEAD" : "GET", path, host, port, headers);
    if (duration > 0)
        g_total = 1 << 30;
    if (conns > g_total)
        conns = g_total;
    g_cap = g_total < 4096 ? g_total : 4096;
    g_results = calloc((size_t)g_cap, sizeof(*g_results));
    struct conn *cs = calloc((size_t)conns, sizeof(*cs));
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    double t0 = now();
    if (duration > 0)
        g_until = t0 + duration;
    for (int i = 0; i < conns; i++) {
        cs[i].id = i;
        cs[i].fd = -1;
        cs[i].md = EVP_MD_CTX_new();
        conn_next(&cs[i]);
    }
    struct epoll_event evs[256];
    while (g_finished < g_started || (g_started < g_total && !(g_until && now() >= g_until))) {
        double left = limit - (now() - t0);
        if (left <= 0)
            break;
        int n = epoll_wait(g_epfd, evs, 256, (int)(left * 1000) + 1);
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
    }
    double wall = now() - t0;
    uint64_t bytes = 0;
    for (int i = 0; i < g_finished; i++)
        bytes += g_results[i].bytes;
    int unfinished = (duration > 0 ? g_started : g_total) - g_finished;
    if (summary) {
        /* latency percentiles over every finished request, answers of any status */
        double *lat = malloc(((size_t)g_finished + 1) * sizeof(double));
        int non2xx = 0, failed = 0;
        for (int i = 0; i < g_finished; i++) {
            lat[i] = g_results[i].time;
            if (!g_results[i].status)
                failed++;
            else if (g_results[i].status < 200 || g_results[i].status > 299)
                non2xx++;
        }
        qsort(lat, (size_t)g_finished, sizeof(double), cmp_double);
        double p50 = g_finished ? lat[(g_finished - 1) / 2] : -1;
        double p99 = g_finished ? lat[(int)((g_finished - 1) * 0.99)] : -1;
        printf("{\"wall\": %.6f, \"bytes\": %llu, \"errors\": %d, \"timed_out\": %d, "
               "\"requests\": %d, \"non2xx\": %d, \"failed\": %d, \"rate\": %.1f, "
               "\"p50\": %.6f, \"p99\": %.6f}\n",
               wall, (unsigned long long)bytes, g_errors + unfinished, unfinished, g_finished,
               non2xx, failed, wall > 0 ? g_finished / wall : 0, p50, p99);
        return g_errors + unfinished ? 1 : 0;
    }
    printf("{\"wall\": %.6f, \"bytes\": %llu, \"errors\": %d, \"timed_out\": %d, \"requests\": [",
           wall, (unsigned long long)bytes, g_errors + unfinished, unfinished);
    for (int i = 0; i < g_finished; i++) {
        struct result *r = &g_results[i];
        printf("%s\n {\"conn\": %d, \"status\": %d, \"bytes\": %llu, \"ttfb\": %.6f, "
               "\"time\": %.6f, \"sha256\": \"%s\", \"header\": \"%s\"}",
               i ? "," : "", r->conn, r->status, (unsigned long long)r->bytes, r->ttfb, r->time,
               r->sha, r->header);
    }
    printf("]}\n");
    return g_errors + unfinished ? 1 : 0;
}
