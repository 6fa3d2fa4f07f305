#ifndef REGMIRROR_RATELIMIT_H
#define REGMIRROR_RATELIMIT_H
/*
 * ratelimit: an upstream's pull budget as it announces it (Docker Hub), and whether a cached
 * tag should be served without asking the upstream.
 *
 * Docker Hub answers manifest GETs and HEADs with
 *   ratelimit-limit: 100;w=21600          pulls allowed per window of w seconds
 *   ratelimit-remaining: 76;w=21600       pulls left in the window
 *   docker-ratelimit-source: 192.0.2.1    whose budget it is (an address or an account id)
 * ratelimit_parse reads one such value; it is outside input, so the grammar is strict:
 *
 *   value  = item *( OWS "," OWS item )     surrounding OWS allowed; the first item counts
 *   item   = count *( OWS ";" OWS param )
 *   param  = token "=" token                 "w" (1..RATELIMIT_WINDOW_MAX) at most once;
 *                                            other parameters are checked and ignored
 *   count  = 1*DIGIT                         at most RATELIMIT_COUNT_MAX
 *
 * Anything else (signs, junk, a number too large, an empty item) makes the whole value
 * unreadable and the answer updates nothing.
 *
 * A struct ratelimit is one upstream's record: the last budget seen on its answers and the
 * block a 429 started. It is plain data owned by whoever embeds it (the upstream client).
 * Times are CLOCK_MONOTONIC milliseconds passed in by the caller. Not thread-safe.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define RATELIMIT_COUNT_MAX 1000000000L
#define RATELIMIT_WINDOW_MAX (31L * 86400) /* seconds */
#define RATELIMIT_VALUE_MAX 256            /* bytes of a header value we read at all */
#define RATELIMIT_SOURCE_MAX 64            /* docker-ratelimit-source, with its NUL */
/* How long a budget without a window counts, and a 429 with neither Retry-After nor a
 * window blocks. */
#define RATELIMIT_DEFAULT_WINDOW_S 60L

struct ratelimit_value {
    long count;
    long window_s; /* 0: the value gave no window */
};

/* Parses v[0..len) into out. 0, or -1 when the value is unreadable (out is then zeroed). */
int ratelimit_parse(const char *v, size_t len, struct ratelimit_value *out);

struct ratelimit {
    bool known; /* limit and remaining were seen */
    long limit, remaining;
    long window_s;                     /* 0: none given */
    char source[RATELIMIT_SOURCE_MAX]; /* "" when absent or not a plain token */
    time_t seen;                       /* wall clock of the last answer that carried them */
    int64_t seen_ms;
    int64_t blocked_until_ms; /* a 429 asked us to stay away until then; 0: no block */
    int64_t logged_until_ms;  /* the hold was logged for the window that ends then */
};

/*
 * Updates rl from one answer's header values (each may be NULL). Both limit and remaining
 * must be readable, else nothing changes and false is returned. The window is the limit's,
 * else the remaining's. A source that is not a plain token (letters, digits, ".:-_") is kept
 * as "".
 */
bool ratelimit_note(struct ratelimit *rl, const char *limit, const char *remaining,
                    const char *source, int64_t now_ms);

/*
 * A 429: no upstream check until the window resets, that is after retry_after_s when it is
 * known (>= 0), else the record's window, else RATELIMIT_DEFAULT_WINDOW_S.
 */
void ratelimit_note_429(struct ratelimit *rl, long retry_after_s, int64_t now_ms);

/* What to do with a cached tag that is due for its upstream check. */
enum ratelimit_hold {
    RATELIMIT_OPEN,    /* ask the upstream as usual */
    RATELIMIT_RESERVE, /* the remaining budget is at or under the reserve: serve the cache */
    RATELIMIT_BLOCKED, /* a 429's block runs: serve the cache */
};

/*
 * The hold for a reserve of `reserve` pulls, or `reserve` percent of the limit when percent
 * is set. A budget counts for its window (RATELIMIT_DEFAULT_WINDOW_S without one) after it
 * was seen: by then the upstream has refilled it, so the next check may go out and read it
 * again.
 */
enum ratelimit_hold ratelimit_hold(const struct ratelimit *rl, int64_t reserve, bool percent,
                                   int64_t now_ms);

/* Whether a hold is to be logged now: true once per window (or block), then false. */
bool ratelimit_log_due(struct ratelimit *rl, enum ratelimit_hold hold, int64_t now_ms);

/* "open", "reserve", "blocked". */
const char *ratelimit_hold_name(enum ratelimit_hold hold);

#endif
