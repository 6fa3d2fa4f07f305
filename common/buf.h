#ifndef REGMIRROR_BUF_H
#define REGMIRROR_BUF_H
/*
 * buf: the one growable buffer, with a hard cap, for anything whose size comes from outside
 * (request heads, bodies, upstream answers, listings, signing strings).
 *
 *   struct buf b = BUF_INIT(1 << 20);     no allocation until the first append
 *   if (buf_append(&b, p, n) != BUF_OK)   BUF_NOMEM or BUF_TOO_BIG; b is unchanged
 *   char *s = buf_take(&b);               the caller owns s (NUL-terminated), b is empty again
 *   buf_free(&b);
 *
 * The bytes are always followed by a NUL (not counted in len), so a buffer of text can be
 * read as a C string. buf owns b->p; buf_take hands it over.
 *
 * buf_grow_items does the same for arrays of any element type: the array a caller keeps as a
 * pointer, a count and a capacity grows by doubling, never past max_items.
 */
#include <stdarg.h>
#include <stddef.h>

enum buf_rc {
    BUF_OK = 0,
    BUF_NOMEM,   /* malloc failed */
    BUF_TOO_BIG, /* the result would pass the buffer's cap */
};

struct buf {
    char *p;    /* NULL until the first append; else p[len] == '\0' */
    size_t len; /* bytes held */
    size_t cap; /* bytes allocated, not counting the NUL */
    size_t max; /* hard limit on len */
};

#define BUF_INIT(max_bytes) ((struct buf){NULL, 0, 0, (max_bytes)})
/* For buffers whose size is bounded elsewhere (by construction, not by outside input). */
#define BUF_UNCAPPED ((size_t)-1 / 2)

void buf_init(struct buf *b, size_t max);
/* Makes room for extra more bytes without changing len. */
enum buf_rc buf_reserve(struct buf *b, size_t extra);
/* The same without doubling: room for exactly len + extra, for a buffer whose size the
 * caller plans (one flushed at a threshold). */
enum buf_rc buf_reserve_exact(struct buf *b, size_t extra);
enum buf_rc buf_append(struct buf *b, const void *p, size_t n);
enum buf_rc buf_append_str(struct buf *b, const char *s);
enum buf_rc buf_putc(struct buf *b, char c);
enum buf_rc buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
enum buf_rc buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Grows len by n after the caller wrote n bytes into the room buf_reserve made. */
void buf_commit(struct buf *b, size_t n);
/* Keeps the first n bytes (n <= len). */
void buf_truncate(struct buf *b, size_t n);
/* Drops the bytes, keeps the memory. */
void buf_clear(struct buf *b);
/* Drops the first n bytes (a consumed prefix). */
void buf_consume(struct buf *b, size_t n);
/* The bytes as a C string ("" when empty); valid until the next change. */
const char *buf_cstr(const struct buf *b);
/* Hands the bytes to the caller (malloc'd, NUL-terminated; "" when empty, NULL on ENOMEM). */
char *buf_take(struct buf *b);
void buf_free(struct buf *b);

/*
 * Ensures *items (elements of elem_size bytes, *cap of them allocated) has room for need
 * elements. BUF_TOO_BIG when need > max_items; on failure *items and *cap are unchanged.
 */
enum buf_rc buf_grow_items(void *items, size_t *cap, size_t need, size_t elem_size,
                           size_t max_items);

#endif
