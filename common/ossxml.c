/* A small strict reader for OSS's XML answers (see ossxml.h). */
#include "ossxml.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool all_ws(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_ws(s[i]))
            return false;
    return true;
}

static bool name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == ':';
}

static bool name_char(char c)
{
    return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

/* Appends the UTF-8 encoding of cp; returns its length, 0 for an invalid code point. */
static size_t utf8_put(uint32_t cp, char out[4])
{
    if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
        return 0;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/*
 * Decodes the entity at raw[0] == '&' (at most len bytes): its bytes into out, their count
 * into *outn. Returns the entity's length in raw, or 0 when malformed.
 */
static size_t entity(const char *raw, size_t len, char out[4], size_t *outn)
{
    static const struct {
        const char *name;
        char c;
    } named[] = {{"lt;", '<'}, {"gt;", '>'}, {"amp;", '&'}, {"quot;", '"'}, {"apos;", '\''}};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        size_t n = strlen(named[i].name);
        if (len >= n + 1 && memcmp(raw + 1, named[i].name, n) == 0) {
            out[0] = named[i].c;
            *outn = 1;
            return n + 1;
        }
    }
    if (len < 4 || raw[1] != '#')
        return 0;
    bool hex = raw[2] == 'x';
    size_t i = hex ? 3 : 2;
    uint32_t cp = 0;
    size_t digits = 0;
    for (; i < len && raw[i] != ';'; i++, digits++) {
        char c = raw[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (hex && c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (hex && c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return 0;
        if (digits >= 8)
            return 0;
        cp = cp * (hex ? 16u : 10u) + d;
    }
    if (i >= len || digits == 0)
        return 0;
    *outn = utf8_put(cp, out);
    return *outn ? i + 1 : 0;
}

ssize_t ossxml_decode(const char *raw, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        char tmp[4];
        size_t tn = 1;
        if (raw[i] == '&') {
            size_t used = entity(raw + i, len - i, tmp, &tn);
            if (!used)
                return -1;
            i += used;
        } else {
            if (raw[i] == '\0' || raw[i] == '<')
                return -1;
            tmp[0] = raw[i++];
        }
        for (size_t k = 0; k < tn; k++, n++)
            if (out && n + 1 < cap)
                out[n] = tmp[k];
    }
    if (out && cap)
        out[n < cap ? n : cap - 1] = '\0';
    return (ssize_t)n;
}

int ossxml_url_decode(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '+') {
            *w++ = ' ';
            continue;
        }
        if (*r != '%') {
            *w++ = *r;
            continue;
        }
        unsigned v = 0;
        for (int k = 1; k <= 2; k++) {
            char c = r[k];
            unsigned d;
            if (c >= '0' && c <= '9')
                d = (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f')
                d = (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F')
                d = (unsigned)(c - 'A' + 10);
            else
                return -1;
            v = v * 16 + d;
        }
        if (v == 0)
            return -1;
        *w++ = (char)v;
        r += 2;
    }
    *w = '\0';
    return 0;
}

/* ---- the walker ---- */

struct walker {
    const char *buf;
    size_t len, pos;
    char path[OSSXML_MAX_PATH + 1];
    size_t plen[OSSXML_MAX_DEPTH + 1]; /* path length before each open element */
    bool has_children[OSSXML_MAX_DEPTH + 1];
    int depth;
};

/* Skips "<!-- ... -->" at pos; false when it is not a complete comment. */
static bool skip_comment(struct walker *w)
{
    if (w->len - w->pos < 7 || memcmp(w->buf + w->pos, "<!--", 4) != 0)
        return false;
    for (size_t i = w->pos + 4; i + 2 < w->len; i++) {
        if (memcmp(w->buf + i, "-->", 3) == 0) {
            w->pos = i + 3;
            return true;
        }
    }
    return false;
}

/* Skips white space and comments (outside the root element and between children). */
static bool skip_misc(struct walker *w)
{
    for (;;) {
        while (w->pos < w->len && is_ws(w->buf[w->pos]))
            w->pos++;
        if (w->pos + 3 < w->len && memcmp(w->buf + w->pos, "<!--", 4) == 0) {
            if (!skip_comment(w))
                return false;
            continue;
        }
        return true;
    }
}

/* Reads a name at pos into [*s, *s + *n). */
static bool read_name(struct walker *w, const char **s, size_t *n)
{
    size_t start = w->pos;
    if (w->pos >= w->len || !name_start(w->buf[w->pos]))
        return false;
    while (w->pos < w->len && name_char(w->buf[w->pos]))
        w->pos++;
    *s = w->buf + start;
    *n = w->pos - start;
    return *n <= OSSXML_MAX_NAME;
}

/* Parses attributes up to '>' or "/>"; *empty for the latter. */
static bool read_attrs(struct walker *w, bool *empty)
{
    for (;;) {
        bool ws = false;
        while (w->pos < w->len && is_ws(w->buf[w->pos])) {
            w->pos++;
            ws = true;
        }
        if (w->pos >= w->len)
            return false;
        if (w->buf[w->pos] == '>') {
            w->pos++;
            *empty = false;
            return true;
        }
        if (w->buf[w->pos] == '/') {
            if (w->pos + 1 >= w->len || w->buf[w->pos + 1] != '>')
                return false;
            w->pos += 2;
            *empty = true;
            return true;
        }
        const char *name;
        size_t n;
        if (!ws || !read_name(w, &name, &n))
            return false;
        while (w->pos < w->len && is_ws(w->buf[w->pos]))
            w->pos++;
        if (w->pos >= w->len || w->buf[w->pos] != '=')
            return false;
        w->pos++;
        while (w->pos < w->len && is_ws(w->buf[w->pos]))
            w->pos++;
        if (w->pos >= w->len || (w->buf[w->pos] != '"' && w->buf[w->pos] != '\''))
            return false;
        char q = w->buf[w->pos++];
        const char *end = memchr(w->buf + w->pos, q, w->len - w->pos);
        if (!end)
            return false;
        size_t vlen = (size_t)(end - (w->buf + w->pos));
        if (ossxml_decode(w->buf + w->pos, vlen, NULL, 0) < 0)
            return false;
        w->pos += vlen + 1;
    }
}

static bool push(struct walker *w, const char *name, size_t n)
{
    if (w->depth >= OSSXML_MAX_DEPTH)
        return false;
    size_t cur = w->depth ? w->plen[w->depth] : 0;
    size_t need = cur + (w->depth ? 1 : 0) + n;
    if (need > OSSXML_MAX_PATH)
        return false;
    w->depth++;
    size_t at = cur;
    if (w->depth > 1)
        w->path[at++] = '/';
    memcpy(w->path + at, name, n);
    w->path[need] = '\0';
    w->plen[w->depth] = need;
    w->has_children[w->depth] = false;
    return true;
}

static void pop(struct walker *w)
{
    w->depth--;
    size_t cur = w->depth ? w->plen[w->depth] : 0;
    w->path[cur] = '\0';
}

/* The name of the innermost open element. */
static const char *top_name(const struct walker *w, size_t *n)
{
    size_t end = w->plen[w->depth];
    size_t start = w->depth > 1 ? w->plen[w->depth - 1] + 1 : 0;
    *n = end - start;
    return w->path + start;
}

int ossxml_walk(const char *buf, size_t len, ossxml_cb cb, void *ctx)
{
    if (!buf || len > OSSXML_MAX_INPUT)
        return -1;
    struct walker *w = calloc(1, sizeof(*w));
    if (!w)
        return -1;
    int result = -1;
    w->buf = buf;
    w->len = len;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        w->pos = 3;
    while (w->pos < len && is_ws(buf[w->pos]))
        w->pos++;
    if (len - w->pos >= 5 && memcmp(buf + w->pos, "<?xml", 5) == 0 &&
        (len - w->pos == 5 || is_ws(buf[w->pos + 5]))) {
        const char *end = NULL;
        for (size_t i = w->pos + 5; i + 1 < len && !end; i++)
            if (buf[i] == '?' && buf[i + 1] == '>')
                end = buf + i;
        if (!end)
            goto out;
        w->pos = (size_t)(end - buf) + 2;
    }
    if (!skip_misc(w) || w->pos >= len || buf[w->pos] != '<')
        goto out;
    /* The root start tag; then the content loop below. */
    for (bool first = true;; first = false) {
        if (!first) {
            /* Inside an element: text or children up to the next '<'. */
            const char *lt = memchr(buf + w->pos, '<', len - w->pos);
            if (!lt)
                goto out;
            size_t tlen = (size_t)(lt - (buf + w->pos));
            const char *text = buf + w->pos;
            w->pos += tlen;
            if (w->pos + 1 < len && buf[w->pos + 1] == '/') {
                /* A close tag. */
                if (w->has_children[w->depth] && !all_ws(text, tlen))
                    goto out;
                if (!w->has_children[w->depth]) {
                    if (ossxml_decode(text, tlen, NULL, 0) < 0)
                        goto out;
                    int rc = cb(ctx, OSSXML_TEXT, w->path, text, tlen);
                    if (rc) {
                        result = rc;
                        goto out;
                    }
                }
                w->pos += 2;
                const char *name;
                size_t n, tn;
                if (!read_name(w, &name, &n))
                    goto out;
                const char *top = top_name(w, &tn);
                if (n != tn || memcmp(name, top, n) != 0)
                    goto out;
                while (w->pos < len && is_ws(buf[w->pos]))
                    w->pos++;
                if (w->pos >= len || buf[w->pos] != '>')
                    goto out;
                w->pos++;
                int rc = cb(ctx, OSSXML_CLOSE, w->path, NULL, 0);
                if (rc) {
                    result = rc;
                    goto out;
                }
                pop(w);
                if (w->depth == 0)
                    break;
                continue;
            }
            if (!all_ws(text, tlen))
                goto out; /* text before a child or a comment: mixed content */
            if (len - w->pos >= 4 && memcmp(buf + w->pos, "<!--", 4) == 0) {
                if (!skip_comment(w))
                    goto out;
                continue;
            }
            w->has_children[w->depth] = true;
        }
        /* A start tag at pos. */
        w->pos++;
        if (w->pos < len && (buf[w->pos] == '!' || buf[w->pos] == '?'))
            goto out;
        const char *name;
        size_t n;
        bool empty = false;
        if (!read_name(w, &name, &n) || !read_attrs(w, &empty) || !push(w, name, n))
            goto out;
        int rc = cb(ctx, OSSXML_OPEN, w->path, NULL, 0);
        if (!rc && empty)
            rc = cb(ctx, OSSXML_TEXT, w->path, "", 0);
        if (!rc && empty)
            rc = cb(ctx, OSSXML_CLOSE, w->path, NULL, 0);
        if (rc) {
            result = rc;
            goto out;
        }
        if (empty) {
            pop(w);
            if (w->depth == 0)
                break;
        }
    }
    if (!skip_misc(w) || w->pos != len)
        goto out;
    result = 0;
out:
    free(w);
    return result;
}

/* ---- typed readers ---- */

struct find_ctx {
    const char *path;
    char *out;
    size_t cap;
    int found; /* 0 not yet, 1 found, -1 too long */
};

static int find_cb(void *ctx, enum ossxml_event ev, const char *path, const char *text, size_t len)
{
    struct find_ctx *f = ctx;
    if (ev != OSSXML_TEXT || strcmp(path, f->path) != 0)
        return 0;
    ssize_t n = ossxml_decode(text, len, f->out, f->cap);
    f->found = (n < 0 || (size_t)n >= f->cap) ? -1 : 1;
    return 2; /* stop: the first one is enough */
}

int ossxml_find(const char *buf, size_t len, const char *path, char *out, size_t cap)
{
    struct find_ctx f = {path, out, cap, 0};
    if (cap == 0)
        return -1;
    out[0] = '\0';
    int rc = ossxml_walk(buf, len, find_cb, &f);
    if (rc == 2)
        return f.found == 1 ? 0 : -1;
    return rc == 0 ? 1 : -1;
}

static int error_cb(void *ctx, enum ossxml_event ev, const char *path, const char *text, size_t len)
{
    struct ossxml_error *e = ctx;
    if (ev == OSSXML_OPEN && strchr(path, '/') == NULL && strcmp(path, "Error") != 0)
        return 3;
    if (ev != OSSXML_TEXT)
        return 0;
    char *dst = NULL;
    size_t cap = 0;
    if (strcmp(path, "Error/Code") == 0) {
        dst = e->code;
        cap = sizeof(e->code);
    } else if (strcmp(path, "Error/Message") == 0) {
        dst = e->message;
        cap = sizeof(e->message);
    } else if (strcmp(path, "Error/RequestId") == 0) {
        dst = e->request_id;
        cap = sizeof(e->request_id);
    } else if (strcmp(path, "Error/EC") == 0) {
        dst = e->ec;
        cap = sizeof(e->ec);
    }
    if (dst && ossxml_decode(text, len, dst, cap) < 0)
        return 3;
    return 0;
}

int ossxml_parse_error(const char *buf, size_t len, struct ossxml_error *out)
{
    memset(out, 0, sizeof(*out));
    if (ossxml_walk(buf, len, error_cb, out) == 0)
        return 0;
    memset(out, 0, sizeof(*out));
    return -1;
}

enum regerr ossxml_regerr(long status, const char *code)
{
    static const struct {
        const char *code;
        enum regerr err;
    } map[] = {
        {"NoSuchKey", REG_ERR_NOT_FOUND},
        {"NoSuchUpload", REG_ERR_NOT_FOUND},
        {"EntityTooLarge", REG_ERR_TOO_LARGE},
        {"InvalidRange", REG_ERR_RANGE_INVALID},
        {"ServiceUnavailable", REG_ERR_UNAVAILABLE},
        {"InternalError", REG_ERR_UNAVAILABLE},
        {"RequestTimeout", REG_ERR_UNAVAILABLE},
        {"TooManyRequests", REG_ERR_UNAVAILABLE},
        {"Throttling", REG_ERR_UNAVAILABLE},
        {"SlowDown", REG_ERR_UNAVAILABLE},
    };
    if (code && *code) {
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
            if (strcmp(code, map[i].code) == 0)
                return map[i].err;
    }
    if (status == 404 && (!code || !*code))
        return REG_ERR_NOT_FOUND; /* HEAD of a missing key without x-oss-err */
    if (status == 416)
        return REG_ERR_RANGE_INVALID;
    if (status >= 500 || status == 429)
        return REG_ERR_UNAVAILABLE;
    return REG_ERR_INTERNAL;
}

struct list_ctx {
    struct ossxml_list *l;
    size_t kcap, scap, pcap; /* allocated keys, sizes, prefixes */
    bool url;
    bool root_ok;
    int err;
};

static char *dup_decoded(const char *text, size_t len)
{
    ssize_t n = ossxml_decode(text, len, NULL, 0);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s)
        ossxml_decode(text, len, s, (size_t)n + 1);
    return s;
}

static int list_cb(void *ctx, enum ossxml_event ev, const char *path, const char *text, size_t len)
{
    struct list_ctx *c = ctx;
    struct ossxml_list *l = c->l;
    if (ev == OSSXML_OPEN) {
        if (strcmp(path, "ListBucketResult") == 0) {
            c->root_ok = true;
            return 0;
        }
        if (!c->root_ok)
            return 4;
        if (strcmp(path, "ListBucketResult/Contents") == 0) {
            if (l->nkeys + l->nprefixes >= OSSXML_MAX_LIST)
                return 4;
            if (buf_grow_items(&l->keys, &c->kcap, l->nkeys + 1, sizeof(*l->keys),
                               OSSXML_MAX_LIST) != BUF_OK ||
                buf_grow_items(&l->sizes, &c->scap, l->nkeys + 1, sizeof(*l->sizes),
                               OSSXML_MAX_LIST) != BUF_OK)
                return 4;
            l->keys[l->nkeys] = NULL;
            l->sizes[l->nkeys] = 0;
            l->nkeys++;
        } else if (strcmp(path, "ListBucketResult/CommonPrefixes") == 0) {
            if (l->nkeys + l->nprefixes >= OSSXML_MAX_LIST)
                return 4;
            if (buf_grow_items(&l->prefixes, &c->pcap, l->nprefixes + 1, sizeof(*l->prefixes),
                               OSSXML_MAX_LIST) != BUF_OK)
                return 4;
            l->prefixes[l->nprefixes++] = NULL;
        }
        return 0;
    }
    if (ev == OSSXML_CLOSE) {
        if (strcmp(path, "ListBucketResult/Contents") == 0 && !l->keys[l->nkeys - 1])
            return 4;
        if (strcmp(path, "ListBucketResult/CommonPrefixes") == 0 && !l->prefixes[l->nprefixes - 1])
            return 4;
        return 0;
    }
    char **dst = NULL;
    if (strcmp(path, "ListBucketResult/Contents/Key") == 0) {
        dst = &l->keys[l->nkeys - 1];
    } else if (strcmp(path, "ListBucketResult/CommonPrefixes/Prefix") == 0) {
        dst = &l->prefixes[l->nprefixes - 1];
    } else if (strcmp(path, "ListBucketResult/NextContinuationToken") == 0 ||
               strcmp(path, "ListBucketResult/NextMarker") == 0) {
        dst = &l->next;
    } else if (strcmp(path, "ListBucketResult/IsTruncated") == 0) {
        if (len == 4 && memcmp(text, "true", 4) == 0)
            l->truncated = true;
        else if (!(len == 5 && memcmp(text, "false", 5) == 0))
            return 4;
        return 0;
    } else if (strcmp(path, "ListBucketResult/EncodingType") == 0) {
        c->url = len == 3 && memcmp(text, "url", 3) == 0;
        return 0;
    } else if (strcmp(path, "ListBucketResult/Contents/Size") == 0) {
        char num[24];
        ssize_t n = ossxml_decode(text, len, num, sizeof(num));
        if (n <= 0 || (size_t)n >= sizeof(num) || num[0] < '0' || num[0] > '9')
            return 4;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(num, &end, 10);
        if (errno || *end)
            return 4;
        l->sizes[l->nkeys - 1] = v;
        return 0;
    }
    if (!dst)
        return 0;
    if (*dst)
        return 4; /* the same field twice */
    *dst = dup_decoded(text, len);
    return *dst ? 0 : 4;
}

void ossxml_list_free(struct ossxml_list *l)
{
    for (size_t i = 0; i < l->nkeys; i++)
        free(l->keys[i]);
    for (size_t i = 0; i < l->nprefixes; i++)
        free(l->prefixes[i]);
    free(l->keys);
    free(l->sizes);
    free(l->prefixes);
    free(l->next);
    memset(l, 0, sizeof(*l));
}

int ossxml_parse_list(const char *buf, size_t len, struct ossxml_list *out)
{
    struct list_ctx c = {.l = out};
    memset(out, 0, sizeof(*out));
    if (ossxml_walk(buf, len, list_cb, &c) != 0 || !c.root_ok)
        goto fail;
    if (c.url) {
        /* Keys and prefixes are URL-encoded; the continuation token is opaque. */
        for (size_t i = 0; i < out->nkeys; i++)
            if (ossxml_url_decode(out->keys[i]) != 0)
                goto fail;
        for (size_t i = 0; i < out->nprefixes; i++)
            if (ossxml_url_decode(out->prefixes[i]) != 0)
                goto fail;
    }
    return 0;
fail:
    ossxml_list_free(out);
    return -1;
}
