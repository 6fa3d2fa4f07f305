#include "buf.h"

#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN 64

void buf_init(struct buf *b, size_t max)
{
    *b = BUF_INIT(max);
}

static enum buf_rc reserve(struct buf *b, size_t extra, bool exact)
{
    if (extra > b->max || b->len > b->max - extra)
        return BUF_TOO_BIG;
    size_t need = b->len + extra;
    if (b->p && need <= b->cap)
        return BUF_OK;
    size_t cap = exact ? need : b->cap < BUF_MIN ? BUF_MIN : b->cap;
    while (cap < need)
        cap = cap > b->max / 2 ? b->max : cap * 2;
    if (cap > b->max)
        cap = b->max;
    char *p = realloc(b->p, cap + 1);
    if (!p)
        return BUF_NOMEM;
    if (!b->p)
        p[0] = '\0';
    b->p = p;
    b->cap = cap;
    return BUF_OK;
}

enum buf_rc buf_reserve(struct buf *b, size_t extra)
{
    return reserve(b, extra, false);
}

enum buf_rc buf_reserve_exact(struct buf *b, size_t extra)
{
    return reserve(b, extra, true);
}

void buf_commit(struct buf *b, size_t n)
{
    b->len += n;
    b->p[b->len] = '\0';
}

enum buf_rc buf_append(struct buf *b, const void *p, size_t n)
{
    enum buf_rc rc = buf_reserve(b, n);
    if (rc != BUF_OK)
        return rc;
    if (n)
        memcpy(b->p + b->len, p, n);
    buf_commit(b, n);
    return BUF_OK;
}

enum buf_rc buf_append_str(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

enum buf_rc buf_putc(struct buf *b, char c)
{
    return buf_append(b, &c, 1);
}

enum buf_rc buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    enum buf_rc rc = n < 0 ? BUF_NOMEM : buf_reserve(b, (size_t)n);
    if (rc == BUF_OK) {
        vsnprintf(b->p + b->len, (size_t)n + 1, fmt, again);
        b->len += (size_t)n;
    }
    va_end(again);
    return rc;
}

enum buf_rc buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum buf_rc rc = buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void buf_truncate(struct buf *b, size_t n)
{
    if (n >= b->len)
        return;
    b->len = n;
    b->p[n] = '\0';
}

void buf_clear(struct buf *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        buf_clear(b);
        return;
    }
    memmove(b->p, b->p + n, b->len - n + 1);
    b->len -= n;
}

const char *buf_cstr(const struct buf *b)
{
    return b->p ? b->p : "";
}

char *buf_take(struct buf *b)
{
    char *p = b->p ? b->p : strdup("");
    size_t max = b->max;
    *b = BUF_INIT(max);
    return p;
}

void buf_free(struct buf *b)
{
    free(b->p);
    size_t max = b->max;
    *b = BUF_INIT(max);
}

enum buf_rc buf_grow_items(void *items, size_t *cap, size_t need, size_t elem_size,
                           size_t max_items)
{
    void **pp = items;
    if (need <= *cap && *pp)
        return BUF_OK;
    if (need > max_items || max_items > (size_t)-1 / elem_size)
        return BUF_TOO_BIG;
    size_t n = *cap < 8 ? 8 : *cap;
    while (n < need)
        n = n > max_items / 2 ? max_items : n * 2;
    if (n > max_items)
        n = max_items;
    void *p = realloc(*pp, n * elem_size);
    if (!p)
        return BUF_NOMEM;
    *pp = p;
    *cap = n;
    return BUF_OK;
}
