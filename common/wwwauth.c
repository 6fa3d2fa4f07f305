#include "wwwauth.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

/* The largest kept parameter; longer values of unknown parameters are skipped, not kept. */
#define VALUE_MAX WWWAUTH_SCOPE_MAX

enum { SEEN_REALM = 1, SEEN_SERVICE = 2, SEEN_ERROR = 4 };

struct cursor {
    const char *p, *end;
};

static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_token68_char(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("-._~+/", c) != NULL;
}

static void skip_ows(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

/* Skips whitespace and empty list elements (RFC 7230 section 7 allows ",,"). */
static void skip_list_separators(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == ','))
        c->p++;
}

static size_t token_len(const struct cursor *c)
{
    const char *q = c->p;
    while (q < c->end && is_tchar((unsigned char)*q))
        q++;
    return (size_t)(q - c->p);
}

/*
 * Is the rest of this challenge a token68 (e.g. "Negotiate abc=="), that is token68 characters,
 * then "=" padding, then the end of the element? If so, consumes it.
 */
static bool take_token68(struct cursor *c)
{
    struct cursor q = *c;
    while (q.p < q.end && is_token68_char((unsigned char)*q.p))
        q.p++;
    if (q.p == c->p)
        return false;
    while (q.p < q.end && *q.p == '=')
        q.p++;
    skip_ows(&q);
    if (q.p < q.end && *q.p != ',')
        return false;
    *c = q;
    return true;
}

/*
 * Reads a token or a quoted-string value into buf (cap bytes, NUL-terminated when it fits).
 * Returns the value's full unescaped length (which may be >= cap), or -1 on bad syntax.
 */
static long read_value(struct cursor *c, char *buf, size_t cap)
{
    size_t n = 0;

    if (c->p < c->end && *c->p == '"') {
        c->p++;
        for (;;) {
            if (c->p >= c->end)
                return -1; /* unterminated */
            unsigned char ch = (unsigned char)*c->p++;
            if (ch == '"')
                break;
            if (ch == '\\') { /* quoted-pair: the next byte stands for itself */
                if (c->p >= c->end)
                    return -1;
                ch = (unsigned char)*c->p++;
            }
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return -1;
            if (n + 1 < cap)
                buf[n] = (char)ch;
            n++;
        }
    } else {
        size_t t = token_len(c);
        if (t == 0)
            return -1;
        for (size_t i = 0; i < t; i++) {
            if (n + 1 < cap)
                buf[n] = c->p[i];
            n++;
        }
        c->p += t;
    }
    if (cap > 0)
        buf[n < cap ? n : cap - 1] = '\0';
    return (long)n;
}

static int set_once(char *dst, size_t cap, const char *v, size_t n, unsigned *seen, unsigned bit)
{
    if (*seen & bit)
        return 0;
    if (n >= cap)
        return -1;
    memcpy(dst, v, n + 1);
    *seen |= bit;
    return 0;
}

static int append_scope(char *dst, size_t cap, const char *v, size_t n)
{
    size_t have = strlen(dst);
    size_t sep = have > 0 && n > 0 ? 1 : 0;
    if (have + sep + n >= cap)
        return -1;
    if (sep)
        dst[have++] = ' ';
    memcpy(dst + have, v, n + 1);
    return 0;
}

/* Keeps one auth-param of a known scheme; ignores the ones the token flow does not use. */
static int keep_param(struct wwwauth_challenge *ch, unsigned *seen, const char *name, size_t nlen,
                      const char *v, size_t n)
{
    bool bearer = ch->scheme == WWWAUTH_BEARER;

    if (nlen == 5 && strncasecmp(name, "realm", 5) == 0)
        return set_once(ch->realm, sizeof(ch->realm), v, n, seen, SEEN_REALM);
    if (bearer && nlen == 7 && strncasecmp(name, "service", 7) == 0)
        return set_once(ch->service, sizeof(ch->service), v, n, seen, SEEN_SERVICE);
    if (bearer && nlen == 5 && strncasecmp(name, "scope", 5) == 0)
        return append_scope(ch->scope, sizeof(ch->scope), v, n);
    if (bearer && nlen == 5 && strncasecmp(name, "error", 5) == 0)
        return set_once(ch->error, sizeof(ch->error), v, n, seen, SEEN_ERROR);
    return 0;
}

/*
 * After a parameter and its comma: does a parameter ("name =") follow, or a new challenge
 * ("Scheme ...")? Looks ahead without consuming.
 */
static bool param_follows(const struct cursor *c)
{
    struct cursor q = *c;
    size_t t = token_len(&q);
    if (t == 0)
        return false;
    q.p += t;
    skip_ows(&q);
    return q.p < q.end && *q.p == '=';
}

/* Parses the auth-params of one challenge; leaves c at the next challenge or the end. */
static int parse_params(struct cursor *c, struct wwwauth_challenge *ch, bool keep)
{
    char val[VALUE_MAX];
    unsigned seen = 0;

    for (;;) {
        const char *name = c->p;
        size_t nlen = token_len(c);
        if (nlen == 0)
            return -1;
        c->p += nlen;
        skip_ows(c);
        if (c->p >= c->end || *c->p != '=')
            return -1;
        c->p++;
        skip_ows(c);
        long n = read_value(c, val, sizeof(val));
        if (n < 0)
            return -1;
        /* val may be truncated; keep_param refuses any n over the kept field's cap. */
        if (keep && keep_param(ch, &seen, name, nlen, val, (size_t)n) != 0)
            return -1;
        skip_ows(c);
        if (c->p >= c->end)
            return 0;
        if (*c->p != ',')
            return -1;
        skip_list_separators(c);
        if (c->p >= c->end || !param_follows(c))
            return 0;
    }
}

static enum wwwauth_scheme scheme_of(const char *s, size_t n)
{
    if (n == 6 && strncasecmp(s, "Bearer", 6) == 0)
        return WWWAUTH_BEARER;
    if (n == 5 && strncasecmp(s, "Basic", 5) == 0)
        return WWWAUTH_BASIC;
    return 0;
}

void wwwauth_init(struct wwwauth *out)
{
    out->n = 0;
}

int wwwauth_parse(struct wwwauth *out, const char *value, size_t len)
{
    struct cursor c = {value, value + len};
    struct wwwauth_challenge ch;

    if (len > WWWAUTH_INPUT_MAX)
        return -1;
    for (;;) {
        skip_list_separators(&c);
        if (c.p >= c.end)
            return 0;
        const char *scheme = c.p;
        size_t slen = token_len(&c);
        if (slen == 0)
            return -1;
        c.p += slen;
        memset(&ch, 0, sizeof(ch));
        ch.scheme = scheme_of(scheme, slen);
        bool keep = ch.scheme != 0 && out->n < WWWAUTH_MAX_CHALLENGES;

        const char *before_space = c.p;
        skip_ows(&c);
        if (c.p < c.end && *c.p != ',') {
            if (c.p == before_space)
                return -1; /* "Bearer=..." or "Bearer\"...": the scheme needs a space */
            if (!take_token68(&c) && parse_params(&c, &ch, keep) != 0)
                return -1;
        }
        if (keep)
            out->ch[out->n++] = ch;
    }
}

const struct wwwauth_challenge *wwwauth_find(const struct wwwauth *w, enum wwwauth_scheme scheme)
{
    for (size_t i = 0; i < w->n; i++) {
        if (w->ch[i].scheme == scheme)
            return &w->ch[i];
    }
    return NULL;
}
