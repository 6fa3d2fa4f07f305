#ifndef REGMIRROR_STORAGE_WATCH_H
#define REGMIRROR_STORAGE_WATCH_H
/*
 * storage_watch: a storage wrapper that tells the eviction (evict.c) which blobs came into use
 * while a pass runs: the targets of links written or read, and blobs whose data a writer
 * checks before linking it. With worker threads it also holds the gate that keeps a pass's
 * last look and its delete together (see struct storage_watch in storage_watch.c).
 *
 * Ownership: the wrapper owns inner (storage_free frees both). The eviction borrows the
 * struct storage_watch (storage_watch_of) for as long as the wrapper lives.
 */
#include <stdbool.h>
#include <stddef.h>

#include "digest.h"
#include "storage.h"

struct storage_watch;

/* Wraps inner. NULL in, NULL out; inner itself when out of memory (storage_watch_of is then
 * NULL, and the maintenance refuses it). */
struct storage *storage_watch_wrap(struct storage *inner);

/* The watch behind st, NULL when st is not one storage_watch_wrap made. */
struct storage_watch *storage_watch_of(struct storage *st);

/* The driver under the wrapper: calls through it are no uses of anything. */
struct storage *storage_watch_inner(struct storage_watch *w);

/* Readers and writers take the gate from now on (set before any worker runs). */
void storage_watch_set_gated(struct storage_watch *w, bool gated);

/* Starts or stops recording; either way what was recorded is forgotten. */
void storage_watch_record(struct storage_watch *w, bool on);

/* Something could not be recorded: every digest counts as touched until recording restarts. */
void storage_watch_overflow(struct storage_watch *w);

/* Whether d came into use since recording started (always, after an overflow). */
bool storage_watch_touched(struct storage_watch *w, const struct digest *d);

/* The digests recorded so far, appended to *v (malloc'd, the caller frees it); nothing after
 * an overflow, and an overflow when out of memory. */
void storage_watch_recorded(struct storage_watch *w, struct digest **v, size_t *n);

/* The exclusive side of the gate, around one last look and its delete (no-ops ungated). */
void storage_watch_gate_close(struct storage_watch *w);
void storage_watch_gate_open(struct storage_watch *w);

#endif
