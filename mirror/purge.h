#ifndef REGMIRROR_PURGE_H
#define REGMIRROR_PURGE_H
/*
 * purge: upload purging (storage.maintenance.uploadpurging) on a timer of the event loop.
 * Upload sessions older than age are removed every interval (only logged with dryrun). The
 * age counts from the later of the session's start and its last write, so a slow push that is
 * still sending is kept. The first pass comes after the interval, an hour at most. A pass
 * walks the repositories in small steps: on the loop (inline offload) a few milliseconds a
 * tick, else one job on a worker at a time.
 *
 * Ownership: everything passed in is borrowed and must outlive the purge. A job on a worker
 * holds a reference; purge_free drops the owner's, so the last job's done frees the rest.
 */
#include <event2/event.h>

#include "config.h"
#include "registry.h"
#include "storage.h"

struct purge;
struct offload;

/* Starts purging as cfg says (the caller checked that it is enabled). st is the driver the
 * purge reads (under any wrapper); NULL when out of memory. */
struct purge *purge_new(struct event_base *base, const struct config *cfg, struct storage *st,
                        struct registry *reg, struct offload *ol);
/* Stops the timer; a job still on a worker returns early. Call it before offload_free. */
void purge_free(struct purge *p);

#endif
