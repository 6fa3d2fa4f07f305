#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include <event2/event.h>

#include "offload.h"

#define JOBS 200

struct counter {
    struct event_base *base;
    pthread_t loop_thread;
    int worked, done, cancelled;
    int expect;
    bool done_on_loop;
    bool worked_off_loop;
    int posts_seen;
};

struct job {
    struct counter *c;
    int seq;
    struct offload *ol;
};

static void work(void *arg)
{
    struct job *j = arg;
    __atomic_fetch_add(&j->c->worked, 1, __ATOMIC_RELAXED);
    if (!pthread_equal(pthread_self(), j->c->loop_thread))
        j->c->worked_off_loop = true;
    usleep(100);
}

static void done(void *arg, bool cancelled)
{
    struct job *j = arg;
    struct counter *c = j->c;
    if (!pthread_equal(pthread_self(), c->loop_thread))
        c->done_on_loop = false;
    c->done++;
    if (cancelled)
        c->cancelled++;
    if (c->done == c->expect && c->base)
        event_base_loopexit(c->base, NULL);
    free(j);
}

static void run_jobs(struct offload *ol, struct counter *c, int n)
{
    for (int i = 0; i < n; i++) {
        struct job *j = calloc(1, sizeof(*j));
        assert_non_null(j);
        j->c = c;
        j->seq = i;
        offload_run(ol, work, done, j);
    }
}

/* Zero threads: work and done run before offload_run returns, on the caller's thread. */
static void test_inline(void **state)
{
    struct counter c = {.loop_thread = pthread_self(), .done_on_loop = true, .expect = 3};
    struct offload *ol = offload_new(NULL, 0);
    assert_non_null(ol);
    assert_true(offload_inline(ol));
    run_jobs(ol, &c, 3);
    assert_int_equal(c.worked, 3);
    assert_int_equal(c.done, 3);
    assert_false(c.worked_off_loop);
    offload_free(ol);
}

/* Threads: every work runs off the loop, every done on it, once each. */
static void test_threads(void **state)
{
    struct event_base *base = event_base_new();
    struct counter c = {
        .base = base, .loop_thread = pthread_self(), .done_on_loop = true, .expect = JOBS};
    struct offload *ol = offload_new(base, 4);
    assert_non_null(ol);
    assert_false(offload_inline(ol));
    run_jobs(ol, &c, JOBS);
    event_base_dispatch(base);
    assert_int_equal(c.worked, JOBS);
    assert_int_equal(c.done, JOBS);
    assert_int_equal(c.cancelled, 0);
    assert_true(c.done_on_loop);
    assert_true(c.worked_off_loop);
    offload_free(ol);
    event_base_free(base);
}

/* Shutdown with work queued: what started finishes, the rest is cancelled, each done once. */
static void test_shutdown_cancels(void **state)
{
    struct event_base *base = event_base_new();
    struct counter c = {.loop_thread = pthread_self(), .done_on_loop = true, .expect = -1};
    struct offload *ol = offload_new(base, 1);
    assert_non_null(ol);
    run_jobs(ol, &c, JOBS);
    offload_free(ol);
    assert_int_equal(c.done, JOBS);
    assert_int_equal(c.worked + c.cancelled, JOBS);
    assert_true(c.cancelled > 0);
    event_base_free(base);
}

/* Posts from work reach the loop in order, before the job's done. */
static void posted(void *arg, bool cancelled)
{
    struct job *j = arg;
    assert_int_equal(j->c->posts_seen, j->seq);
    j->c->posts_seen++;
}

static void post_work(void *arg)
{
    struct job *j = arg;
    static struct job steps[10];
    for (int i = 0; i < 10; i++) {
        steps[i] = (struct job){.c = j->c, .seq = i};
        assert_int_equal(offload_post(j->ol, posted, &steps[i]), 0);
    }
}

static void post_done(void *arg, bool cancelled)
{
    struct job *j = arg;
    assert_int_equal(j->c->posts_seen, 10);
    j->c->done++;
    event_base_loopexit(j->c->base, NULL);
}

static void test_post_order(void **state)
{
    struct event_base *base = event_base_new();
    struct counter c = {.base = base, .loop_thread = pthread_self()};
    struct offload *ol = offload_new(base, 2);
    assert_non_null(ol);
    struct job j = {.c = &c, .ol = ol};
    offload_run(ol, post_work, post_done, &j);
    event_base_dispatch(base);
    assert_int_equal(c.done, 1);
    offload_free(ol);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inline),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_shutdown_cancels),
        cmocka_unit_test(test_post_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
