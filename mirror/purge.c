/* Upload purging: stale upload sessions go, one repository at a time. */
#include "purge.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gc.h"
#include "layout.h"
#include "log.h"
#include "maintenance_int.h"
#include "offload.h"

/* The first upload purge after start: registry:2 waits up to an hour; so does this, at most. */
#define PURGE_FIRST_MAX_MS 3600000LL

struct purge {
    const struct config *cfg;
    struct storage *st;
    struct registry *reg;
    struct offload *ol;
    bool threaded; /* passes run on workers, between loop steps */
    struct event *ev;
    struct gc_walk *walk;
    size_t purged;
    bool finished;
    unsigned refs;    /* the owner's and the job's on a worker; on the loop only */
    atomic_bool stop; /* the owner let go: work in progress returns */
};

static void purge_unref(struct purge *p)
{
    if (--p->refs > 0)
        return;
    gc_walk_free(p->walk);
    free(p);
}

static time_t parse_startedat(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    return end ? timegm(&tm) : 0;
}

/* The last sign of life of an upload session: its start or its last write. */
static time_t upload_last(struct storage *st, const char *name, const char *id)
{
    char path[LAYOUT_PATH_MAX];
    char *body = NULL;
    size_t len = 0;
    time_t last = 0;
    struct storage_stat sst;
    if (storage_get_content(st, layout_upload_startedat(path, name, id), 64, &body, &len) == REG_OK)
        last = parse_startedat(body);
    free(body);
    if (storage_stat(st, layout_upload_startedat(path, name, id), &sst) == REG_OK && !last)
        last = sst.mtime;
    if (storage_stat(st, layout_upload_data(path, name, id), &sst) == REG_OK && sst.mtime > last)
        last = sst.mtime;
    return last;
}

static void purge_repo(struct purge *p, const char *name)
{
    char repo[LAYOUT_PATH_MAX], dir[LAYOUT_PATH_MAX + 16];
    struct storage_list l = {0};
    snprintf(dir, sizeof(dir), "%s/_uploads", layout_repo(repo, name));
    if (storage_list(p->st, dir, &l) != REG_OK)
        return;
    time_t now = time(NULL);
    for (size_t i = 0; i < l.n; i++) {
        time_t last = upload_last(p->st, name, l.names[i]);
        if ((int64_t)(now - last) * 1000 <= p->cfg->storage.maintenance.uploadpurging.age_ms)
            continue;
        if (p->cfg->storage.maintenance.uploadpurging.dryrun) {
            log_info("uploadpurging (dry run): would remove upload %s of %s", l.names[i], name);
            continue;
        }
        if (registry_upload_cancel(p->reg, name, l.names[i]) == REG_OK) {
            log_info("uploadpurging: removed upload %s of %s", l.names[i], name);
            p->purged++;
        }
    }
    storage_list_free(&l);
}

/* Purges repositories until budget_us is spent or the walk ends (finished). */
static void purge_run(struct purge *p, int64_t budget_us)
{
    int64_t t0 = maintenance_now_us();
    char name[LAYOUT_PATH_MAX];
    if (!p->walk) {
        p->walk = gc_walk_new(p->st);
        p->purged = 0;
        if (!p->walk) {
            p->finished = true;
            return;
        }
    }
    while (!atomic_load(&p->stop)) {
        if (gc_walk_next(p->walk, name) <= 0) {
            log_info("uploadpurging: pass done, %zu stale uploads removed", p->purged);
            p->finished = true;
            return;
        }
        purge_repo(p, name);
        if (maintenance_now_us() - t0 > budget_us)
            return;
    }
}

/* On the loop after a step: the next step now, or the next pass after the interval. */
static void purge_next(struct purge *p)
{
    if (!p->finished) {
        maintenance_schedule(p->ev, 0);
        return;
    }
    gc_walk_free(p->walk);
    p->walk = NULL;
    p->finished = false;
    maintenance_schedule(p->ev, p->cfg->storage.maintenance.uploadpurging.interval_ms * 1000);
}

static void purge_work(void *arg)
{
    purge_run(arg, MAINTENANCE_WORK_BUDGET_US);
}

static void purge_done(void *arg, bool cancelled)
{
    struct purge *p = arg;
    if (!cancelled && !atomic_load(&p->stop))
        purge_next(p);
    purge_unref(p);
}

static void purge_tick(evutil_socket_t fd, short what, void *arg)
{
    struct purge *p = arg;
    if (!p->threaded) {
        purge_run(p, MAINTENANCE_TICK_BUDGET_US);
        purge_next(p);
        return;
    }
    p->refs++;
    offload_run(p->ol, purge_work, purge_done, p);
}

struct purge *purge_new(struct event_base *base, const struct config *cfg, struct storage *st,
                        struct registry *reg, struct offload *ol)
{
    struct purge *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->cfg = cfg;
    p->st = st;
    p->reg = reg;
    p->ol = ol;
    p->threaded = !offload_inline(ol);
    p->refs = 1;
    atomic_init(&p->stop, false);
    p->ev = evtimer_new(base, purge_tick, p);
    if (!p->ev) {
        free(p);
        return NULL;
    }
    int64_t age_ms = cfg->storage.maintenance.uploadpurging.age_ms;
    int64_t interval_ms = cfg->storage.maintenance.uploadpurging.interval_ms;
    int64_t first = interval_ms < PURGE_FIRST_MAX_MS ? interval_ms : PURGE_FIRST_MAX_MS;
    maintenance_schedule(p->ev, first * 1000);
    log_info("uploadpurging: uploads older than %" PRId64 " ms go every %" PRId64 " ms%s", age_ms,
             interval_ms, cfg->storage.maintenance.uploadpurging.dryrun ? " (dry run)" : "");
    return p;
}

void purge_free(struct purge *p)
{
    if (!p)
        return;
    event_free(p->ev);
    p->ev = NULL;
    atomic_store(&p->stop, true);
    purge_unref(p);
}
