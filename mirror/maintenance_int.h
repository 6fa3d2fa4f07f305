#ifndef REGMIRROR_MAINTENANCE_INT_H
#define REGMIRROR_MAINTENANCE_INT_H
/* What the pieces of the maintenance (purge.c, evict.c) share: their time budgets and timers. */
#include <stdint.h>
#include <time.h>

#include <event2/event.h>

/* Work per timer tick before yielding to the event loop. */
#define MAINTENANCE_TICK_BUDGET_US 4000
/* Work per job on a worker thread: bounds how long shutdown waits for one. */
#define MAINTENANCE_WORK_BUDGET_US 100000

static inline int64_t maintenance_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline void maintenance_schedule(struct event *ev, int64_t us)
{
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    evtimer_add(ev, &tv);
}

#endif
