#ifndef REGMIRROR_UPSTREAM_INT_H
#define REGMIRROR_UPSTREAM_INT_H
/*
 * What upstream.c (requests, retries, redirects) and upstream_token.c (challenges, the token
 * cache and token fetches) share. Private to the upstream module.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "ratelimit.h"
#include "upstream.h"
#include "wwwauth.h"

struct event;
struct event_base;
struct httpc_req;
struct upstream_token;
struct upstream_token_fetch;

struct upstream {
    struct httpc *http;
    struct event_base *base;
    char *remoteurl; /* no trailing '/' */
    char *origin;    /* scheme://host:port, lowercase, for the Authorization rule */
    char *host;      /* for logs */
    char *basic;     /* "Authorization: Basic ..." or NULL when anonymous */
    bool hub;
    int attempts;
    long retry_delay_ms;
    long connect_timeout_ms;
    /* Learned from the last challenge, so later requests can authenticate up front. */
    char *realm, *service;
    bool basic_wanted;
    struct upstream_token *tokens;
    size_t ntokens;
    struct upstream_token_fetch *fetches;
    struct upstream_req *reqs;
    uint64_t rng;
    /* Which token realms get basic (realm_describe), and the last realm host warned about
     * for getting none. */
    char cred_rule[320];
    char *refused_realm;
    /* The pull budget (ratelimit.h) and its place in the metrics. */
    struct ratelimit ratelimit;
    char *name;
    struct metrics_upstream metrics;
    struct upstream_stats stats;
};

enum upstream_challenge { UPSTREAM_CH_NONE, UPSTREAM_CH_BEARER, UPSTREAM_CH_BASIC };

struct upstream_req {
    struct upstream *up;
    struct upstream_req *prev, *next;   /* up->reqs */
    struct upstream_req *wprev, *wnext; /* waiting->waiters */
    struct upstream_token_fetch *waiting;
    struct upstream_callbacks cb;
    void *ctx;
    bool head;
    bool manifest_get;
    char *repo, *scope, *url0, *url;
    char **headers;  /* NULL-terminated copy of extra_headers */
    char *auth;      /* "Authorization: ..." sent to the upstream's origin, or NULL */
    char *bearer;    /* the token inside auth, to drop it from the cache if refused */
    bool auth_fresh; /* auth was just issued (or is Basic): a refusal is final */
    struct httpc_req *cur;
    struct event *retry_ev;
    int attempt; /* 1-based number of the current try */
    int hops;
    bool auth_retried; /* the one retry after a refused cached token is spent */
    bool cross_origin; /* a redirect left the upstream's origin: no Authorization from now on */
    bool paused;
    bool responded; /* on_response ran: no retry from here on */
    /* The owner's reference (dropped by upstream_finish or upstream_cancel) plus one held by each
     * httpc callback that calls the caller back. */
    int refs;
    bool finished;  /* on_done ran or runs: no callback from here on */
    bool cancelled; /* upstream_cancel came first: no callback from here on */
    /* The current answer. */
    long status;
    bool pass; /* a success handed to the caller; otherwise we read and act on it */
    size_t swallowed;
    const struct httpc_headers *headers_in;
    enum upstream_challenge ch_kind;
    char *ch_realm, *ch_service;
    char ch_error[WWWAUTH_ERROR_MAX];
    char *location;
    long retry_after_s;
};

/* ---- helpers (upstream.c) ---- */

int64_t upstream_now_ms(void);
/* a b c in a new string, NULL when out of memory. */
char *upstream_concat(const char *a, const char *b, const char *c);
/* Frees *dst and stores v there. */
void upstream_replace(char **dst, char *v);
bool upstream_nonempty(const char *s);
/*
 * The lowercase "scheme://host:port" origin of url (default ports filled in) and, if host_out
 * is not NULL, its host; NULL unless it is an http(s) URL. userinfo is reported through
 * *has_userinfo when that is not NULL.
 */
char *upstream_origin_of(const char *url, char **host_out, bool *has_userinfo);
/* Retry-After: delta-seconds or an HTTP-date; -1 when absent or unreadable. */
long upstream_parse_retry_after(const char *v);
/* An answer's headers (status) from the upstream or its token realm: the pull budget they
 * announce, and a 429's block (retry_after_s as parsed, -1 when absent). */
void upstream_note_budget(struct upstream *up, long status, const struct httpc_headers *h,
                          long retry_after_s);

/* ---- request life (upstream.c) ---- */

/* Takes auth and bearer (either may be NULL), wiping the Authorization it replaces. */
void upstream_set_auth(struct upstream_req *r, char *auth, char *bearer);
/* The single exit: reports the outcome once and drops the owner's reference. */
void upstream_finish(struct upstream_req *r, enum upstream_result res, long retry_after_s,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Sends the request to r->url with the current credentials. 0, or -1 when out of memory. */
int upstream_attempt_start(struct upstream_req *r);

/* ---- challenges and tokens (upstream_token.c) ---- */

/* Keeps what a 401's challenges say (r->ch_*); Bearer wins over Basic. */
void upstream_read_challenge(struct upstream_req *r, const struct httpc_headers *h);
/* Acts on a 401: credentials or a token, then another attempt, or the end of r. */
void upstream_on_unauthorized(struct upstream_req *r);

/*
 * Gets r a Bearer token for its scope: from the cache (and sends r at once), or by waiting
 * for the token fetch of the same key (starting it if none runs). 0, or -1 when out of memory.
 */
int upstream_acquire_token(struct upstream_req *r, const char *realm, const char *service);
/* Takes r off the token fetch it waits for, if any. */
void upstream_waiter_unlink(struct upstream_req *r);
/* Cancels the token fetches (their waiters must be gone) and empties the cache. */
void upstream_tokens_free(struct upstream *up);

#endif
