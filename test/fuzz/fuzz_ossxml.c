/*
 * libFuzzer target for ossxml (the reader of OSS's XML answers): no crash, balanced
 * open/close events with paths that nest, text only inside the input, every typed reader's
 * fields NUL-terminated within their buffers, and lists whose entries are all set.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ossxml.h"

struct walk {
    const char *buf;
    size_t len;
    int depth;
    char last_open[OSSXML_MAX_PATH + 1];
};

static int walk_cb(void *ctx, enum ossxml_event ev, const char *path, const char *text, size_t len)
{
    struct walk *w = ctx;
    size_t plen = strlen(path);
    if (plen == 0 || plen > OSSXML_MAX_PATH)
        abort();
    if (ev == OSSXML_OPEN) {
        if (++w->depth > OSSXML_MAX_DEPTH)
            abort();
        memcpy(w->last_open, path, plen + 1);
    } else if (ev == OSSXML_CLOSE) {
        if (--w->depth < 0)
            abort();
    } else {
        /* raw text lies inside the input (or is the empty text of <x/>) */
        if (len > 0 && (text < w->buf || text + len > w->buf + w->len))
            abort();
        if (ossxml_decode(text, len, NULL, 0) < 0)
            abort(); /* the walker only reports text whose entities decode */
        char small[8];
        ssize_t n = ossxml_decode(text, len, small, sizeof(small));
        if (n < 0 || memchr(small, '\0', sizeof(small)) == NULL)
            abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct walk w = {.buf = buf, .len = size};
    if (ossxml_walk(buf, size, walk_cb, &w) == 0 && w.depth != 0)
        abort();

    struct ossxml_error e;
    if (ossxml_parse_error(buf, size, &e) == 0) {
        if (!memchr(e.code, '\0', sizeof(e.code)) || !memchr(e.message, '\0', sizeof(e.message)) ||
            !memchr(e.request_id, '\0', sizeof(e.request_id)) || !memchr(e.ec, '\0', sizeof(e.ec)))
            abort();
    }

    struct ossxml_list l;
    if (ossxml_parse_list(buf, size, &l) == 0) {
        if (l.nkeys + l.nprefixes > OSSXML_MAX_LIST)
            abort();
        for (size_t i = 0; i < l.nkeys; i++)
            if (!l.keys[i])
                abort();
        for (size_t i = 0; i < l.nprefixes; i++)
            if (!l.prefixes[i])
                abort();
        ossxml_list_free(&l);
    }

    char id[64];
    if (ossxml_find(buf, size, "InitiateMultipartUploadResult/UploadId", id, sizeof(id)) == 0 &&
        strlen(id) >= sizeof(id))
        abort();

    /* URL decoding of a NUL-terminated copy */
    char *copy = malloc(size + 1);
    if (copy) {
        memcpy(copy, data, size);
        copy[size] = '\0';
        size_t before = strlen(copy);
        if (ossxml_url_decode(copy) == 0 && strlen(copy) > before)
            abort();
        free(copy);
    }
    return 0;
}
