#include "ratelimit.h"

#include <string.h>

/* ---- the header grammar ---- */

struct cursor {
    const char *p, *end;
};

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 tchar. */
static bool is_tchar(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void skip_ows(struct cursor *c)
{
    while (c->p < c->end && is_ows(*c->p))
        c->p++;
}

static bool at(const struct cursor *c, char ch)
{
    return c->p < c->end && *c->p == ch;
}

/* 1*DIGIT within [0, max]; false on no digit or a larger number. */
static bool read_number(struct cursor *c, long max, long *out)
{
    long v = 0;
    const char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        long d = *c->p - '0';
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
        c->p++;
    }
    *out = v;
    return c->p > start;
}

/* 1*tchar; the span is returned through name/len. */
static bool read_token(struct cursor *c, const char **name, size_t *len)
{
    const char *start = c->p;
    while (c->p < c->end && is_tchar(*c->p))
        c->p++;
    *name = start;
    *len = (size_t)(c->p - start);
    return *len > 0;
}

/* param = token "=" token; w is read as the window. */
static bool read_param(struct cursor *c, struct ratelimit_value *item, bool *have_w)
{
    const char *name;
    size_t n;
    if (!read_token(c, &name, &n) || !at(c, '='))
        return false;
    c->p++;
    if (n == 1 && (name[0] == 'w' || name[0] == 'W')) {
        long w;
        if (*have_w || !read_number(c, RATELIMIT_WINDOW_MAX, &w) || w == 0)
            return false;
        if (c->p < c->end && is_tchar(*c->p))
            return false; /* "w=10s" */
        *have_w = true;
        item->window_s = w;
        return true;
    }
    const char *value;
    return read_token(c, &value, &n);
}

static bool read_item(struct cursor *c, struct ratelimit_value *item)
{
    bool have_w = false;
    *item = (struct ratelimit_value){0, 0};
    if (!read_number(c, RATELIMIT_COUNT_MAX, &item->count))
        return false;
    for (;;) {
        const char *mark = c->p;
        skip_ows(c);
        if (!at(c, ';')) {
            c->p = mark;
            return true;
        }
        c->p++;
        skip_ows(c);
        if (!read_param(c, item, &have_w))
            return false;
    }
}

int ratelimit_parse(const char *v, size_t len, struct ratelimit_value *out)
{
    struct cursor c = {v, v + len};
    struct ratelimit_value item;
    *out = (struct ratelimit_value){0, 0};
    if (!v || len == 0 || len > RATELIMIT_VALUE_MAX)
        return -1;
    skip_ows(&c);
    for (bool first = true;; first = false) {
        if (!read_item(&c, &item))
            goto fail;
        if (first)
            *out = item;
        skip_ows(&c);
        if (c.p == c.end)
            return 0;
        if (!at(&c, ','))
            goto fail;
        c.p++;
        skip_ows(&c);
    }
fail:
    *out = (struct ratelimit_value){0, 0};
    return -1;
}

/* ---- the record ---- */

static bool parse_header(const char *v, struct ratelimit_value *out)
{
    return v && ratelimit_parse(v, strnlen(v, RATELIMIT_VALUE_MAX + 1), out) == 0;
}

static void keep_source(struct ratelimit *rl, const char *source)
{
    size_t n = source ? strnlen(source, RATELIMIT_SOURCE_MAX) : 0;
    rl->source[0] = '\0';
    if (n == 0 || n >= RATELIMIT_SOURCE_MAX)
        return;
    for (size_t i = 0; i < n; i++) {
        char ch = source[i];
        bool ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= 'A' && ch <= 'Z') || ch == '.' || ch == ':' || ch == '-' || ch == '_';
        if (!ok)
            return;
    }
    memcpy(rl->source, source, n + 1);
}

bool ratelimit_note(struct ratelimit *rl, const char *limit, const char *remaining,
                    const char *source, int64_t now_ms)
{
    struct ratelimit_value l, r;
    if (!parse_header(limit, &l) || !parse_header(remaining, &r))
        return false;
    rl->known = true;
    rl->limit = l.count;
    rl->remaining = r.count;
    rl->window_s = l.window_s ? l.window_s : r.window_s;
    keep_source(rl, source);
    rl->seen = time(NULL);
    rl->seen_ms = now_ms;
    return true;
}

static int64_t window_ms(const struct ratelimit *rl)
{
    return (rl->window_s > 0 ? rl->window_s : RATELIMIT_DEFAULT_WINDOW_S) * 1000;
}

void ratelimit_note_429(struct ratelimit *rl, long retry_after_s, int64_t now_ms)
{
    int64_t ms = retry_after_s >= 0 ? (int64_t)retry_after_s * 1000 : window_ms(rl);
    rl->blocked_until_ms = now_ms + ms;
    rl->logged_until_ms = 0; /* a new block is worth a line of its own */
}

enum ratelimit_hold ratelimit_hold(const struct ratelimit *rl, int64_t reserve, bool percent,
                                   int64_t now_ms)
{
    if (rl->blocked_until_ms > now_ms)
        return RATELIMIT_BLOCKED;
    if (!rl->known || now_ms - rl->seen_ms >= window_ms(rl))
        return RATELIMIT_OPEN;
    int64_t floor = percent ? (int64_t)rl->limit * reserve / 100 : reserve;
    return rl->remaining <= floor ? RATELIMIT_RESERVE : RATELIMIT_OPEN;
}

bool ratelimit_log_due(struct ratelimit *rl, enum ratelimit_hold hold, int64_t now_ms)
{
    if (hold == RATELIMIT_OPEN || now_ms < rl->logged_until_ms)
        return false;
    rl->logged_until_ms =
        hold == RATELIMIT_BLOCKED ? rl->blocked_until_ms : rl->seen_ms + window_ms(rl);
    return true;
}

const char *ratelimit_hold_name(enum ratelimit_hold hold)
{
    switch (hold) {
    case RATELIMIT_OPEN:
        return "open";
    case RATELIMIT_RESERVE:
        return "reserve";
    case RATELIMIT_BLOCKED:
        return "blocked";
    }
    return "unknown";
}
