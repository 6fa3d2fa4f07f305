/*
 * upstream's authentication: what a 401 asks for (Basic or a Bearer token), the per
 * realm+service+scope token cache, and the token fetches that requests wait on (one fetch
 * per key, however many requests need it).
 */
#include <ctype.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "realm.h"
#include "upstream.h"
#include "upstream_int.h"
#include "wwwauth.h"

/* A token answer is a small JSON document; JWTs with many claims stay far below this. */
#define TOKEN_BODY_MAX (128 * 1024)
#define TOKEN_TIMEOUT_MS 30000L
/* Tokens kept; the soonest to expire goes first when full. */
#define TOKEN_CACHE_MAX 256
/* The distribution spec's default lifetime when the answer has no expires_in. */
#define TOKEN_DEFAULT_LIFETIME_S 60

struct upstream_token {
    struct upstream_token *next;
    char *key; /* realm "\n" service "\n" scope */
    char *token;
    int64_t use_until_ms; /* monotonic */
};

struct upstream_token_fetch {
    struct upstream_token_fetch *next;
    struct upstream *up;
    char *key;
    struct httpc_req *req;
    struct upstream_req *waiters;
    long status;
    long retry_after_s;
    struct buf body; /* capped at TOKEN_BODY_MAX */
};

/* Percent-encodes s (RFC 3986 unreserved characters stay) into a new string. */
static char *url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

/* RFC 3339 as token servers write issued_at ("2024-05-01T10:00:00.123Z", "+02:00"). */
static int parse_rfc3339(const char *s, time_t *out)
{
    struct tm tm = {0};
    int n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6)
        return -1;
    const char *p = s + n;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p))
            p++;
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int hh, mm, k = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &k) != 2 || k != 5)
            return -1;
        offset = (hh * 3600L + mm * 60L) * (*p == '-' ? -1 : 1);
        p += 1 + k;
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    *out = t - offset;
    return 0;
}

/* ---- token cache ---- */

static char *token_key(const char *realm, const char *service, const char *scope)
{
    size_t n = strlen(realm) + strlen(service) + strlen(scope) + 3;
    char *k = malloc(n);
    if (k)
        snprintf(k, n, "%s\n%s\n%s", realm, service, scope);
    return k;
}

static void token_entry_free(struct upstream_token *e)
{
    free(e->key);
    if (e->token) {
        OPENSSL_cleanse(e->token, strlen(e->token));
        free(e->token);
    }
    free(e);
}

/* Unlinks and frees the entries matching: expired ones, or key (and token, if given). */
static void cache_drop(struct upstream *up, const char *key, const char *token, bool expired)
{
    int64_t now = upstream_now_ms();
    struct upstream_token **pp = &up->tokens;
    while (*pp) {
        struct upstream_token *e = *pp;
        bool match = (expired && e->use_until_ms <= now) ||
                     (key && strcmp(e->key, key) == 0 && (!token || strcmp(e->token, token) == 0));
        if (match) {
            *pp = e->next;
            token_entry_free(e);
            up->ntokens--;
        } else {
            pp = &e->next;
        }
    }
}

static const char *cache_get(struct upstream *up, const char *key)
{
    int64_t now = upstream_now_ms();
    for (struct upstream_token *e = up->tokens; e; e = e->next) {
        if (strcmp(e->key, key) == 0 && e->use_until_ms > now)
            return e->token;
    }
    return NULL;
}

static void cache_put(struct upstream *up, const char *key, const char *token, long lifetime_s)
{
    /*
     * Stop using a token a little before it expires, so a request in flight does not carry it
     * past its end: 10% of its life, at least 5 s (but never more than half of it).
     */
    long margin = lifetime_s / 10;
    long floor_s = lifetime_s / 2 < 5 ? lifetime_s / 2 : 5;
    if (margin < floor_s)
        margin = floor_s;
    if (lifetime_s - margin <= 0)
        return;
    cache_drop(up, key, NULL, true);
    if (up->ntokens >= TOKEN_CACHE_MAX && up->tokens) {
        /* unlinked here: dropping by its key would compare later keys with the freed one */
        struct upstream_token **soonest = &up->tokens;
        for (struct upstream_token **pp = &up->tokens; *pp; pp = &(*pp)->next) {
            if ((*pp)->use_until_ms < (*soonest)->use_until_ms)
                soonest = pp;
        }
        struct upstream_token *old = *soonest;
        *soonest = old->next;
        token_entry_free(old);
        up->ntokens--;
    }
    struct upstream_token *e = calloc(1, sizeof(*e));
    if (!e)
        return;
    e->key = strdup(key);
    e->token = strdup(token);
    if (!e->key || !e->token) {
        token_entry_free(e);
        return;
    }
    e->use_until_ms = upstream_now_ms() + (int64_t)(lifetime_s - margin) * 1000;
    e->next = up->tokens;
    up->tokens = e;
    up->ntokens++;
}

void upstream_waiter_unlink(struct upstream_req *r)
{
    struct upstream_token_fetch *f = r->waiting;
    if (!f)
        return;
    if (r->wprev)
        r->wprev->wnext = r->wnext;
    else
        f->waiters = r->wnext;
    if (r->wnext)
        r->wnext->wprev = r->wprev;
    r->wprev = r->wnext = NULL;
    r->waiting = NULL;
}

/* ---- challenges ---- */

/* Keeps what a 401's challenges say; Bearer wins over Basic. */
void upstream_read_challenge(struct upstream_req *r, const struct httpc_headers *h)
{
    struct wwwauth *w = malloc(sizeof(*w));
    const char *v;
    size_t pos = 0;

    if (!w)
        return;
    wwwauth_init(w);
    while ((v = httpc_header_next(h, "WWW-Authenticate", &pos)) != NULL)
        wwwauth_parse(w, v, strlen(v)); /* on -1 the complete challenges are still usable */
    const struct wwwauth_challenge *c = wwwauth_find(w, WWWAUTH_BEARER);
    if (c && c->realm[0]) {
        r->ch_kind = UPSTREAM_CH_BEARER;
        r->ch_realm = strdup(c->realm);
        r->ch_service = strdup(c->service);
        snprintf(r->ch_error, sizeof(r->ch_error), "%s", c->error);
        if (!r->ch_realm || !r->ch_service)
            r->ch_kind = UPSTREAM_CH_NONE;
    } else if (wwwauth_find(w, WWWAUTH_BASIC)) {
        r->ch_kind = UPSTREAM_CH_BASIC;
    }
    free(w);
}

/* Drops a cached token the registry refused. */
static void token_forget(struct upstream *up, const char *realm, const char *service,
                         const char *scope, const char *token)
{
    char *key = token_key(realm, service, scope);
    if (key)
        cache_drop(up, key, token, false);
    free(key);
}

void upstream_on_unauthorized(struct upstream_req *r)
{
    struct upstream *up = r->up;

    if (r->cross_origin) {
        upstream_finish(r, UPSTREAM_UNAUTHORIZED, -1, "401 from a redirect target");
        return;
    }
    /*
     * No credentials sent: get some. A cached token refused: it may have been revoked or
     * expired early, so one fresh token is worth a try. Credentials just issued refused: final.
     */
    if (r->ch_kind == UPSTREAM_CH_NONE || (r->auth && (r->auth_fresh || r->auth_retried))) {
        upstream_finish(r, UPSTREAM_UNAUTHORIZED, -1, "upstream refused access%s%s",
                        r->ch_error[0] ? ": " : "", r->ch_error);
        return;
    }
    if (r->auth)
        r->auth_retried = true;
    if (r->ch_kind == UPSTREAM_CH_BASIC) {
        if (!up->basic) {
            upstream_finish(r, UPSTREAM_UNAUTHORIZED, -1,
                            "upstream wants credentials, none configured");
            return;
        }
        up->basic_wanted = true;
        char *auth = strdup(up->basic);
        upstream_set_auth(r, auth, NULL);
        r->auth_fresh = true;
        if (!auth || upstream_attempt_start(r) != 0)
            upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "out of memory");
        return;
    }
    /* Bearer: remember the realm for next time, drop the token that was refused. */
    if (!up->realm || strcmp(up->realm, r->ch_realm) != 0 ||
        strcmp(up->service, r->ch_service) != 0) {
        upstream_replace(&up->realm, strdup(r->ch_realm));
        upstream_replace(&up->service, strdup(r->ch_service));
        if (!up->realm || !up->service) {
            upstream_replace(&up->realm, NULL);
            upstream_replace(&up->service, NULL);
        }
    }
    if (r->bearer)
        token_forget(up, r->ch_realm, r->ch_service, r->scope, r->bearer);
    if (upstream_acquire_token(r, r->ch_realm, r->ch_service) != 0)
        upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "cannot start the token request");
}

/* ---- token fetches ---- */

static void fetch_free(struct upstream_token_fetch *f)
{
    free(f->key);
    if (f->body.p) {
        OPENSSL_cleanse(f->body.p, f->body.len);
        buf_free(&f->body);
    }
    free(f);
}

static int on_tok_headers(struct httpc_req *hr, void *ctx, long status,
                          const struct httpc_headers *h)
{
    struct upstream_token_fetch *f = ctx;
    f->status = status;
    if (status == 429) {
        metrics_inc(METRICS_UPSTREAM_429);
        f->up->stats.rate_limited++;
    }
    if (status == 429)
        f->retry_after_s = upstream_parse_retry_after(httpc_header_get(h, "Retry-After"));
    upstream_note_budget(f->up, status, h, status == 429 ? f->retry_after_s : -1);
    return 0;
}

static int on_tok_data(struct httpc_req *hr, void *ctx, const char *data, size_t len)
{
    struct upstream_token_fetch *f = ctx;
    if (f->status != 200)
        return 0;
    return buf_append(&f->body, data, len) == BUF_OK ? 0 : -1;
}

static bool token_chars_ok(const char *t)
{
    for (; *t; t++) {
        if (*t <= ' ' || *t >= 0x7f)
            return false;
    }
    return true;
}

/*
 * Reads token (or access_token), expires_in and issued_at; caches the token. Returns the
 * token (owned by the caller) or NULL.
 */
static char *read_token(struct upstream_token_fetch *f)
{
    json_t *j = json_loadb(buf_cstr(&f->body), f->body.len, 0, NULL);
    char *token = NULL;

    const char *t = json_string_value(json_object_get(j, "token"));
    if (!upstream_nonempty(t))
        t = json_string_value(json_object_get(j, "access_token"));
    if (!upstream_nonempty(t) || !token_chars_ok(t))
        goto out;
    json_t *exp = json_object_get(j, "expires_in");
    long life = json_is_integer(exp) ? (long)json_integer_value(exp) : TOKEN_DEFAULT_LIFETIME_S;
    if (life <= 0)
        life = TOKEN_DEFAULT_LIFETIME_S;
    /* A token issued a while ago (a token server that caches) has less left to live. Clocks
     * differ, so an issued_at in the future or older than the lifetime is not believed. */
    const char *issued = json_string_value(json_object_get(j, "issued_at"));
    time_t at;
    if (issued && parse_rfc3339(issued, &at) == 0) {
        long age = (long)(time(NULL) - at);
        if (age > 0 && age < life)
            life -= age;
    }
    token = strdup(t);
    if (token)
        cache_put(f->up, f->key, token, life);
out:
    json_decref(j);
    return token;
}

static void on_tok_done(struct httpc_req *hr, void *ctx, enum httpc_result res, const char *msg)
{
    struct upstream_token_fetch *f = ctx;
    struct upstream *up = f->up;
    char *token = NULL;
    enum upstream_result fail = UPSTREAM_UNAVAILABLE;
    char why[192];

    f->req = NULL;
    for (struct upstream_token_fetch **pp = &up->fetches; *pp; pp = &(*pp)->next) {
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    }
    if (res != HTTPC_OK) {
        snprintf(why, sizeof(why), "token request failed: %s", msg);
    } else if (f->status == 200) {
        token = read_token(f);
        snprintf(why, sizeof(why), "unusable token answer");
    } else if (f->status == 401 || f->status == 403) {
        fail = UPSTREAM_UNAUTHORIZED;
        snprintf(why, sizeof(why), "token realm refused %s (%ld)",
                 up->basic ? "the configured credentials" : "anonymous access", f->status);
    } else if (f->status == 429) {
        fail = UPSTREAM_TOOMANYREQUESTS;
        snprintf(why, sizeof(why), "token realm rate limit (429)");
    } else {
        snprintf(why, sizeof(why), "token realm answered %ld", f->status);
    }
    if (!token)
        log_kv(LOG_WARN, NULL, "upstream %s: %s", up->host, why);

    /* Waiters leave the list one at a time: their on_done may cancel other waiters. */
    struct upstream_req *r;
    while ((r = f->waiters) != NULL) {
        upstream_waiter_unlink(r);
        if (!token) {
            upstream_finish(r, fail, fail == UPSTREAM_TOOMANYREQUESTS ? f->retry_after_s : -1, "%s",
                            why);
            continue;
        }
        char *auth = upstream_concat("Authorization: Bearer ", token, "");
        char *copy = strdup(token);
        upstream_set_auth(r, auth, copy);
        r->auth_fresh = true;
        if (!auth || !copy || upstream_attempt_start(r) != 0)
            upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "out of memory");
    }
    if (token) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
    }
    fetch_free(f);
}

static const struct httpc_callbacks token_cb = {on_tok_headers, on_tok_data, on_tok_done};

/* Warns once per realm host that it gets no credentials (the host, never the account). */
static void realm_refused(struct upstream *up, const char *realm)
{
    char *host = NULL;
    char *origin = upstream_origin_of(realm, &host, NULL);
    const char *shown = host ? host : "(unparsable)";
    if (!up->refused_realm || strcmp(up->refused_realm, shown) != 0) {
        log_kv(LOG_WARN, NULL,
               "upstream %s: token realm %s%s does not qualify for the configured account "
               "(credentials go to %s): asking it anonymously",
               up->host, shown, origin && strncmp(origin, "http:", 5) == 0 ? " (plain http)" : "",
               up->cred_rule);
        upstream_replace(&up->refused_realm, strdup(shown));
    }
    free(origin);
    free(host);
}

static struct upstream_token_fetch *fetch_start(struct upstream *up, char *key, const char *realm,
                                                const char *service, const char *scope)
{
    struct upstream_token_fetch *f = calloc(1, sizeof(*f));
    char *esc_service = url_escape(service), *esc_scope = url_escape(scope), *url = NULL;

    if (!f || !esc_service || !esc_scope)
        goto fail;
    size_t n = strlen(realm) + strlen(esc_service) + strlen(esc_scope) + 32;
    url = malloc(n);
    if (!url)
        goto fail;
    snprintf(url, n, "%s%sservice=%s&scope=%s", realm, strchr(realm, '?') ? "&" : "?", esc_service,
             esc_scope);
    /* The account goes to the realm the registry names only on the registry's own domain
     * (auth.docker.io for Hub), and never in the clear when the registry is reached over
     * https (see realm.h); elsewhere the token is asked for anonymously. */
    const char *cred = up->basic;
    if (cred && !realm_may_get_credentials(up->remoteurl, realm)) {
        cred = NULL;
        realm_refused(up, realm);
    }
    const char *hdrs[] = {"Accept: application/json", cred, NULL};
    struct httpc_req_opts o = {
        .url = url,
        .headers = hdrs,
        .connect_timeout_ms = up->connect_timeout_ms,
        .timeout_ms = TOKEN_TIMEOUT_MS,
    };
    f->up = up;
    f->key = key;
    f->retry_after_s = -1;
    buf_init(&f->body, TOKEN_BODY_MAX);
    f->req = httpc_start(up->http, &o, &token_cb, f);
    metrics_inc(METRICS_TOKEN_FETCHES);
    up->stats.token_fetches++;
    if (!f->req)
        goto fail;
    free(esc_service);
    free(esc_scope);
    free(url);
    f->next = up->fetches;
    up->fetches = f;
    return f;
fail:
    free(esc_service);
    free(esc_scope);
    free(url);
    free(f);
    free(key);
    return NULL;
}

/*
 * Gets r a Bearer token for its scope: from the cache (and sends r at once), or by waiting
 * for the token fetch of the same key (starting it if none runs). 0, or -1 when out of memory.
 */
int upstream_acquire_token(struct upstream_req *r, const char *realm, const char *service)
{
    struct upstream *up = r->up;
    char *key = token_key(realm, service, r->scope);
    if (!key)
        return -1;
    const char *cached = cache_get(up, key);
    if (cached) {
        free(key);
        char *auth = upstream_concat("Authorization: Bearer ", cached, "");
        char *copy = strdup(cached);
        upstream_set_auth(r, auth, copy);
        r->auth_fresh = false;
        if (!auth || !copy)
            return -1;
        return upstream_attempt_start(r);
    }
    struct upstream_token_fetch *f = up->fetches;
    while (f && strcmp(f->key, key) != 0)
        f = f->next;
    if (f) {
        free(key);
    } else {
        f = fetch_start(up, key, realm, service, r->scope);
        if (!f)
            return -1;
    }
    r->waiting = f;
    r->wnext = f->waiters;
    if (f->waiters)
        f->waiters->wprev = r;
    f->waiters = r;
    return 0;
}

void upstream_tokens_free(struct upstream *up)
{
    while (up->fetches) {
        struct upstream_token_fetch *f = up->fetches;
        up->fetches = f->next;
        httpc_cancel(f->req);
        fetch_free(f);
    }
    while (up->tokens) {
        struct upstream_token *e = up->tokens;
        up->tokens = e->next;
        token_entry_free(e);
    }
}
