/*
 * fuzz_http: arbitrary bytes into one server connection (a bufferevent pair), cut into pieces
 * whose size the first input byte picks, with a handler that answers every request through a
 * different path of the response API. The connection is then closed and the server freed:
 * no crash, no leak, no request left without an answer or an abort.
 */
#include <stdbool.h>
#include <stdint.h>
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

static void run(struct event_base *base, struct bufferevent *client)
{
    for (int i = 0; i < 4; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (client)
            evbuffer_drain(bufferevent_get_input(client), (size_t)-1);
    }
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

    struct event_base *base = event_base_new();
    struct http_server_handler h = {.on_request = on_request};
    struct http_limits lim = {.max_header_bytes = 2048, .max_url_bytes = 256};
    struct http_server *srv = http_server_new(base, &lim, &h);
    http_server_set_access_log(srv, false);
    struct bufferevent *pair[2];
    bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, pair);
    http_server_adopt(srv, pair[0], "fuzz");
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);

    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        bufferevent_write(pair[1], data + off, n);
        run(base, pair[1]);
    }
    run(base, pair[1]);
    bufferevent_flush(pair[1], EV_WRITE, BEV_FINISHED);
    run(base, pair[1]);
    bufferevent_free(pair[1]);
    run(base, NULL);
    http_server_free(srv);
    event_base_free(base);
    return 0;
}
