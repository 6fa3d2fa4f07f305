#ifndef REGMIRROR_OFFLOAD_H
#define REGMIRROR_OFFLOAD_H
/*
 * offload: runs blocking storage work off the event loop, the way nginx's thread pools do.
 *
 * A remote storage driver (OSS) answers each call with an HTTP request that blocks; the loop
 * must never wait on one. A caller splits its work in two: work() runs on a worker thread and
 * may call storage and registry functions (both thread-safe); done() runs afterwards on the
 * loop thread and may answer the request, touch the cache, notify, and so on.
 *
 * With zero threads (the filesystem driver, whose calls are a few local syscalls) the pool is
 * inline: offload_run calls work and done before it returns, so the local path costs one
 * indirect call and no thread hop. Callers must therefore not touch their job after
 * offload_run / offload_req returns.
 *
 * Ownership: the caller allocates arg; work must not free it; done (which always runs exactly
 * once, also when the pool shuts down or the request went away) frees it.
 */
#include <stdbool.h>

struct event_base;
struct http_req;
struct offload;

typedef void (*offload_work_fn)(void *arg);
/* cancelled: the pool is shutting down before work ran (work was then skipped). */
typedef void (*offload_done_fn)(void *arg, bool cancelled);
/* req is NULL when the request was aborted meanwhile (or the pool shut down): free arg only. */
typedef void (*offload_req_done_fn)(void *arg, struct http_req *req);

/* threads 0: inline. NULL on error (logged). */
struct offload *offload_new(struct event_base *base, unsigned threads);
/* Whether work runs inline (then the caller may keep its synchronous fast path). */
bool offload_inline(const struct offload *o);
/*
 * Waits for running work, then calls done(cancelled = true) for what never started. Call it
 * before freeing what the jobs use (registry, storage).
 */
void offload_free(struct offload *o);

/* Queues work(arg), then done(arg) on the loop. done may be NULL when work frees arg. */
void offload_run(struct offload *o, offload_work_fn work, offload_done_fn done, void *arg);

/*
 * Threaded pools only. From a worker thread (inside work): has fn(arg, false) called on the loop
 * soon, in order with other posts and before this job's done. For work that hands results over as
 * it goes (a streamed read). Returns -1 when out of memory (nothing is posted).
 */
int offload_post(struct offload *o, offload_done_fn fn, void *arg);

/*
 * The same for work on behalf of req: takes req's abort slot for the duration (the caller
 * must hold none then, see http_req_on_abort, and sets its own again in done if it needs one)
 * and hands done req, or NULL when the request was aborted meanwhile.
 */
void offload_req(struct offload *o, struct http_req *req, offload_work_fn work,
                 offload_req_done_fn done, void *arg);

#endif
