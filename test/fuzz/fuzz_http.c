/*
 * fuzz_http: arbitrary bytes into one server connection (a bufferevent pair), cut into pieces
 * whose size the first input byte picks, with a handler that answers every request through a
 * different path of the response API. The connection is then closed and the server freed:
 * no crash, no leak, no request left without an answer or an abort. The same bytes are also
 * fed in one piece: both runs must answer with the same statuses (framing depends on the
 * bytes, never on how they were split).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http.h"
#include "log.h"

struct ctx {
    size_t len;
};

static void ctx_abort(struct http_req *req, void *arg)
{
    free(arg);
}

static int on_data(struct http_req *req, void *arg, const char *data, size_t len)
{
    struct ctx *c = arg;
    c->len += len;
    /* a large body is refused part way */
    if (c->len > 4096) {
        http_req_on_abort(req, NULL, NULL);
        free(c);
        http_resp_start(req, 400);
        http_resp_body_mem(req, "too much\n", 9);
        return 1;
    }
    return 0;
}

static void on_end(struct http_req *req, void *arg)
{
    struct ctx *c = arg;
    http_req_on_abort(req, NULL, NULL);
    free(c);
    http_resp_start(req, 200);
    http_resp_header(req, "X-Method", http_req_method_str(req));
    http_resp_body_mem(req, "ok\n", 3);
}

static void on_buffered(struct http_req *req, void *arg, const char *data, size_t len)
{
    http_resp_start(req, 201);
    http_resp_body_mem(req, data, len);
}

static void on_request(struct http_req *req, void *arg)
{
    const char *path = http_req_path(req);
    const char *ua = http_req_header(req, "User-Agent");
    (void)http_req_header_n(req, "X-Rep", 1);
    (void)http_req_query(req);
    switch (path[1]) {
    case 'b':
        http_req_buffer_body(req, 100, on_buffered, NULL);
        break;
    case 's':
        http_resp_start(req, 200);
        http_resp_headerf(req, "X-UA", "%s", ua ? ua : "-");
        http_resp_stream_begin(req, path[2] == 'l' ? 6 : -1, NULL, NULL);
        http_resp_stream_write(req, "abc", 3);
        http_resp_stream_write(req, "def", 3);
        http_resp_stream_end(req);
        break;
    case 'x':
        http_resp_stream_begin(req, 100, NULL, NULL);
        http_resp_stream_write(req, "abc", 3);
        http_resp_stream_abort(req);
        break;
    case 'e':
        http_resp_start(req, 204);
        http_resp_no_body(req, -1);
        break;
    default: {
        struct ctx *c = calloc(1, sizeof(*c));
        if (!c) {
            http_resp_start(req, 500);
            http_resp_no_body(req, -1);
            break;
        }
        http_req_on_abort(req, ctx_abort, c);
        http_req_read_body(req, on_data, on_end, c);
        break;
    }
    }
}

/* Runs the loop until the connection stops answering, collecting what the client receives. */
static void run(struct event_base *base, struct bufferevent *client, struct evbuffer *got)
{
    for (int i = 0, idle = 0; i < 1000 && idle < 4; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        size_t n = client ? evbuffer_get_length(bufferevent_get_input(client)) : 0;
        idle = n ? 0 : idle + 1;
        if (n)
            evbuffer_remove_buffer(bufferevent_get_input(client), got, n);
    }
}

/*
 * One connection fed data in pieces of piece bytes, then EOF. Returns the statuses of the
 * answers as text ("200,400,"); the caller frees it.
 */
static char *feed(const uint8_t *data, size_t size, size_t piece)
{
    struct event_base *base = event_base_new();
    struct http_server_handler h = {.on_request = on_request};
    struct http_limits lim = {.max_header_bytes = 2048, .max_url_bytes = 256};
    struct http_server *srv = http_server_new(base, &lim, &h);
    http_server_set_access_log(srv, false);
    struct bufferevent *pair[2];
    bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, pair);
    http_server_adopt(srv, pair[0], "fuzz");
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);
    struct evbuffer *got = evbuffer_new();

    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        bufferevent_write(pair[1], data + off, n);
        run(base, pair[1], got);
    }
    run(base, pair[1], got);
    bufferevent_flush(pair[1], EV_WRITE, BEV_FINISHED);
    run(base, pair[1], got);
    bufferevent_free(pair[1]);
    run(base, NULL, got);
    http_server_free(srv);
    event_base_free(base);

    evbuffer_add(got, "", 1);
    const char *text = (const char *)evbuffer_pullup(got, -1);
    size_t len = evbuffer_get_length(got) - 1;
    char *statuses = calloc(1, len / 4 + 16);
    size_t w = 0;
    /* answers start with the status line; a body echoing one counts the same in both runs */
    for (const char *p = memmem(text, len, "HTTP/1.1 ", 9); p;
         p = memmem(p + 9, len - (size_t)(p + 9 - text), "HTTP/1.1 ", 9)) {
        if ((size_t)(p + 12 - text) > len)
            break;
        memcpy(statuses + w, p + 9, 3);
        statuses[w + 3] = ',';
        w += 4;
    }
    evbuffer_free(got);
    return statuses;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) {
        log_setup(LOG_ERROR, LOG_FORMAT_TEXT);
        once = true;
    }
    if (size == 0)
        return 0;
    size_t piece = (size_t)(data[0] % 32) + 1;
    data++;
    size--;
    /* the framing decisions depend on the bytes only: whole or in pieces, the same answers */
    char *whole = feed(data, size, size ? size : 1);
    char *pieces = feed(data, size, piece);
    if (strcmp(whole, pieces) != 0) {
        fprintf(stderr, "whole: %s\npieces of %zu: %s\n", whole, piece, pieces);
        abort();
    }
    free(whole);
    free(pieces);
    return 0;
}
