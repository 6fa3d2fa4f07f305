#ifndef REGMIRROR_REDIS_SENTINEL_H
#define REGMIRROR_REDIS_SENTINEL_H
/*
 * redis_sentinel: where the Redis master is, asked of Redis Sentinel
 * (SENTINEL get-master-addr-by-name <mastername>), for the two Redis users (the
 * blob-descriptor cache and the cluster). Each user asks again whenever its connection
 * drops, or the server turns out not to be the master (ROLE) or answers READONLY, LOADING or
 * MASTERDOWN: after a failover the sentinels name the promoted replica.
 *
 * The async ask runs on the loop: every sentinel is asked at once and the first one that
 * names the master wins; the answer never comes inline. The blocking ask tries the sentinels
 * one after the other, each within the timeout, for a caller that may block briefly.
 *
 * A sentinel given by host name is resolved by hiredis when asked.
 */
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct event_base;
struct redis_sentinel;
struct redis_sentinel_ask;

#define REDIS_SENTINEL_HOST_MAX 256

struct redis_sentinel_config {
    const char *mastername; /* NULL or "": no sentinel, redis.addr is the server */
    char *const *addrs;     /* the sentinels, "host:port" or "[v6]:port" */
    size_t naddrs;
    const char *username, *password; /* AUTH with the sentinels; NULL or "" for none */
    int64_t timeout_ms;              /* per sentinel: connect and answer; 0: 500 ms */
};

/* Fills *out from cfg->redis.sentinel; the strings point into cfg. */
void redis_sentinel_config_from(struct redis_sentinel_config *out, const struct config *cfg);

/* Splits "host:port" or "[v6]:port" into host (NUL-terminated) and port; false when
 * malformed or the host does not fit. */
bool redis_sentinel_split_addr(const char *addr, char *host, size_t hostlen, int *port);

enum redis_sentinel_answer {
    REDIS_SENTINEL_MASTER,  /* host and port filled */
    REDIS_SENTINEL_UNKNOWN, /* nil: this sentinel does not know the name */
    REDIS_SENTINEL_BAD,     /* an error reply, or not the [ip, port] the command returns */
};

/* Reads a reply to SENTINEL get-master-addr-by-name. */
enum redis_sentinel_answer redis_sentinel_parse_master(const redisReply *r, char *host,
                                                       size_t hostlen, int *port);
/* Whether a reply to ROLE says "master". */
bool redis_sentinel_role_is_master(const redisReply *r);
/* Whether an error reply means the server is no longer (or not yet) the master to write to:
 * READONLY, LOADING, MASTERDOWN. */
bool redis_sentinel_stale_error(const char *msg, size_t len);

/* The sentinel set of cfg (copied) on base; NULL without cfg->mastername, or when an
 * address is malformed or memory is short (logged). */
struct redis_sentinel *redis_sentinel_new(struct event_base *base,
                                          const struct redis_sentinel_config *cfg);
/* Every ask must be answered or cancelled first. Takes NULL. */
void redis_sentinel_free(struct redis_sentinel *s);
const char *redis_sentinel_mastername(const struct redis_sentinel *s);

/* host NULL: no sentinel named the master in time. host is valid during the call. */
typedef void (*redis_sentinel_cb)(void *ctx, const char *host, int port);

/* Asks the sentinels; cb runs once, from the loop, unless redis_sentinel_cancel comes first.
 * NULL when out of memory. */
struct redis_sentinel_ask *redis_sentinel_ask(struct redis_sentinel *s, redis_sentinel_cb cb,
                                              void *ctx);
void redis_sentinel_cancel(struct redis_sentinel_ask *q);

/* Blocking, from any thread: true with host and port of the master. */
bool redis_sentinel_ask_sync(const struct redis_sentinel *s, char *host, size_t hostlen, int *port);

#endif
