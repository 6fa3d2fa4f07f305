/*
 * libFuzzer target for wwwauth_parse: no crash, every kept field NUL-terminated within its
 * buffer, and every kept challenge written back as a header parses to the same fields.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wwwauth.h"

static void check_terminated(const char *s, size_t cap)
{
    if (memchr(s, '\0', cap) == NULL)
        abort();
}

/* Appends name="value" with '"' and '\' escaped; returns the new length or aborts. */
static size_t put_param(char *buf, size_t n, size_t cap, const char *name, const char *value)
{
    int k = snprintf(buf + n, cap - n, "%s%s=\"", n > 0 && buf[n - 1] != ' ' ? "," : "", name);
    if (k < 0 || (size_t)k >= cap - n)
        abort();
    n += (size_t)k;
    for (const char *p = value; *p; p++) {
        if (n + 3 >= cap)
            abort();
        if (*p == '"' || *p == '\\')
            buf[n++] = '\\';
        buf[n++] = *p;
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return n;
}

static void round_trip(const struct wwwauth_challenge *c)
{
    static char buf[4 * WWWAUTH_SCOPE_MAX + 256];
    size_t n =
        (size_t)snprintf(buf, sizeof(buf), "%s ", c->scheme == WWWAUTH_BEARER ? "Bearer" : "Basic");
    n = put_param(buf, n, sizeof(buf), "realm", c->realm);
    if (c->scheme == WWWAUTH_BEARER) {
        n = put_param(buf, n, sizeof(buf), "service", c->service);
        n = put_param(buf, n, sizeof(buf), "scope", c->scope);
        n = put_param(buf, n, sizeof(buf), "error", c->error);
    }
    struct wwwauth back;
    wwwauth_init(&back);
    if (wwwauth_parse(&back, buf, n) != 0 || back.n != 1)
        abort();
    const struct wwwauth_challenge *b = &back.ch[0];
    if (b->scheme != c->scheme || strcmp(b->realm, c->realm) != 0 ||
        strcmp(b->service, c->service) != 0 || strcmp(b->scope, c->scope) != 0 ||
        strcmp(b->error, c->error) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wwwauth w;
    wwwauth_init(&w);
    int rc = wwwauth_parse(&w, (const char *)data, size);
    if (rc != 0 && rc != -1)
        abort();
    if (w.n > WWWAUTH_MAX_CHALLENGES)
        abort();
    for (size_t i = 0; i < w.n; i++) {
        const struct wwwauth_challenge *c = &w.ch[i];
        if (c->scheme != WWWAUTH_BASIC && c->scheme != WWWAUTH_BEARER)
            abort();
        check_terminated(c->realm, sizeof(c->realm));
        check_terminated(c->service, sizeof(c->service));
        check_terminated(c->scope, sizeof(c->scope));
        check_terminated(c->error, sizeof(c->error));
        if (c->scheme == WWWAUTH_BASIC && (c->service[0] || c->scope[0] || c->error[0]))
            abort();
        round_trip(c);
    }
    /* Appending to a full or partly filled struct stays within bounds. */
    size_t before = w.n;
    rc = wwwauth_parse(&w, (const char *)data, size);
    if (w.n < before || w.n > WWWAUTH_MAX_CHALLENGES)
        abort();
    return 0;
}
