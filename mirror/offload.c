#include "offload.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "http.h"
#include "log.h"

struct job {
    struct job *next;
    offload_work_fn work;
    offload_done_fn done;
    void *arg;
    bool cancelled;
};

struct offload {
    unsigned nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *qhead, *qtail; /* waiting for a worker */
    struct job *dhead, *dtail; /* finished, waiting for the loop */
    bool stopping;
    int efd;
    struct event *ev;
};

/* offload_req's wrapper around the caller's job. */
struct req_job {
    struct http_req *req; /* NULL once aborted */
    offload_work_fn work;
    offload_req_done_fn done;
    void *arg;
};

static void push(struct job **head, struct job **tail, struct job *j)
{
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

/* Queues j for the loop; the caller holds o->mu. */
static void finish(struct offload *o, struct job *j)
{
    bool wake = !o->dhead;
    push(&o->dhead, &o->dtail, j);
    if (wake) {
        uint64_t one = 1;
        /* Only fails when the counter would overflow, which one pending wake-up cannot. */
        (void)!write(o->efd, &one, sizeof(one));
    }
}

static void *worker(void *p)
{
    struct offload *o = p;
    pthread_mutex_lock(&o->mu);
    for (;;) {
        while (!o->qhead && !o->stopping)
            pthread_cond_wait(&o->cv, &o->mu);
        struct job *j = o->qhead;
        if (!j)
            break; /* stopping and nothing queued */
        o->qhead = j->next;
        if (!o->qhead)
            o->qtail = NULL;
        pthread_mutex_unlock(&o->mu);
        j->work(j->arg);
        pthread_mutex_lock(&o->mu);
        finish(o, j);
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

static void run_done(struct job *j)
{
    if (j->done)
        j->done(j->arg, j->cancelled);
    free(j);
}

static void on_ready(evutil_socket_t fd, short what, void *p)
{
    (void)what;
    struct offload *o = p;
    uint64_t n;
    (void)!read(fd, &n, sizeof(n));
    pthread_mutex_lock(&o->mu);
    struct job *j = o->dhead;
    o->dhead = o->dtail = NULL;
    pthread_mutex_unlock(&o->mu);
    while (j) {
        struct job *next = j->next;
        run_done(j);
        j = next;
    }
}

struct offload *offload_new(struct event_base *base, unsigned threads)
{
    struct offload *o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->efd = -1;
    if (threads == 0)
        return o;
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    o->threads = calloc(threads, sizeof(*o->threads));
    if (o->efd < 0 || !o->threads)
        goto fail;
    o->ev = event_new(base, o->efd, EV_READ | EV_PERSIST, on_ready, o);
    if (!o->ev || event_add(o->ev, NULL) != 0)
        goto fail;
    for (; o->nthreads < threads; o->nthreads++) {
        int err = pthread_create(&o->threads[o->nthreads], NULL, worker, o);
        if (err != 0) {
            log_error("offload: cannot start a worker thread: %s", strerror(err));
            goto fail;
        }
    }
    return o;
fail:
    offload_free(o);
    return NULL;
}

bool offload_inline(const struct offload *o)
{
    return o->nthreads == 0;
}

void offload_free(struct offload *o)
{
    if (!o)
        return;
    if (o->threads) {
        pthread_mutex_lock(&o->mu);
        o->stopping = true;
        /* What no worker has taken is cancelled, not run: shutdown should not wait on it. */
        struct job *j = o->qhead;
        o->qhead = o->qtail = NULL;
        for (struct job *c = j; c; c = c->next)
            c->cancelled = true;
        pthread_cond_broadcast(&o->cv);
        pthread_mutex_unlock(&o->mu);
        for (unsigned i = 0; i < o->nthreads; i++)
            pthread_join(o->threads[i], NULL);
        on_ready(o->efd, 0, o);
        /* The cancelled ones, still chained through next. */
        while (j) {
            struct job *next = j->next;
            run_done(j);
            j = next;
        }
        free(o->threads);
        pthread_mutex_destroy(&o->mu);
        pthread_cond_destroy(&o->cv);
    }
    if (o->ev)
        event_free(o->ev);
    if (o->efd >= 0)
        close(o->efd);
    free(o);
}

void offload_run(struct offload *o, offload_work_fn work, offload_done_fn done, void *arg)
{
    /* Stopping: a done that offload_free runs may chain more work, which no worker would
     * take. stopping is written on the loop thread, where offload_run is called. */
    if (o->nthreads == 0 || o->stopping) {
        work(arg);
        if (done)
            done(arg, false);
        return;
    }
    struct job *j = calloc(1, sizeof(*j));
    if (!j) {
        /* Out of memory: the work still has to happen; do it here rather than lose it. */
        work(arg);
        if (done)
            done(arg, false);
        return;
    }
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&o->mu);
    push(&o->qhead, &o->qtail, j);
    pthread_cond_signal(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

int offload_post(struct offload *o, offload_done_fn fn, void *arg)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return -1;
    j->done = fn;
    j->arg = arg;
    pthread_mutex_lock(&o->mu);
    finish(o, j);
    pthread_mutex_unlock(&o->mu);
    return 0;
}

static void req_abort(struct http_req *req, void *p)
{
    (void)req;
    struct req_job *rj = p;
    rj->req = NULL;
}

static void req_work(void *p)
{
    struct req_job *rj = p;
    rj->work(rj->arg);
}

static void req_done(void *p, bool cancelled)
{
    struct req_job *rj = p;
    struct http_req *req = rj->req;
    if (req)
        http_req_on_abort(req, NULL, NULL);
    if (cancelled && req) {
        /* Shutdown: the server is going away and will close the connection. */
        req = NULL;
    }
    rj->done(rj->arg, req);
    free(rj);
}

void offload_req(struct offload *o, struct http_req *req, offload_work_fn work,
                 offload_req_done_fn done, void *arg)
{
    if (o->nthreads == 0) {
        work(arg);
        done(arg, req);
        return;
    }
    struct req_job *rj = malloc(sizeof(*rj));
    if (!rj) {
        work(arg);
        done(arg, req);
        return;
    }
    *rj = (struct req_job){req, work, done, arg};
    http_req_on_abort(req, req_abort, rj);
    offload_run(o, req_work, req_done, rj);
}
