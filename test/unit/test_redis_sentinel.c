#include "peer.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <pthread.h>

#include "redis_sentinel.h"

/* A reply as hiredis reads it off the wire; NULL when resp is not one whole reply. */
static redisReply *reply_of(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    void *r = NULL;
    assert_non_null(rd);
    redisReaderFeed(rd, resp, strlen(resp));
    if (redisReaderGetReply(rd, &r) != REDIS_OK)
        r = NULL;
    redisReaderFree(rd);
    return r;
}

static enum redis_sentinel_answer parse(const char *resp, char *host, int *port)
{
    redisReply *r = reply_of(resp);
    enum redis_sentinel_answer a;
    assert_non_null(r);
    a = redis_sentinel_parse_master(r, host, REDIS_SENTINEL_HOST_MAX, port);
    freeReplyObject(r);
    return a;
}

static void test_split_addr(void **state)
{
    char host[16];
    int port = 0;
    (void)state;
    assert_true(redis_sentinel_split_addr("s1:26379", host, sizeof(host), &port));
    assert_string_equal(host, "s1");
    assert_int_equal(port, 26379);
    assert_true(redis_sentinel_split_addr("[::1]:1", host, sizeof(host), &port));
    assert_string_equal(host, "::1");
    assert_int_equal(port, 1);
    static const char *const bad[] = {"",
                                      "s1",
                                      "s1:",
                                      ":1",
                                      "s1:0",
                                      "s1:x",
                                      "s1:65536",
                                      "s1:-1",
                                      "[::1:1",
                                      "[::1]1",
                                      "a b:1",
                                      "s1:+1",
                                      "averyveryverylonghost:1",
                                      "[]:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (redis_sentinel_split_addr(bad[i], host, sizeof(host), &port))
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_false(redis_sentinel_split_addr(NULL, host, sizeof(host), &port));
}

static void test_parse_master(void **state)
{
    char host[REDIS_SENTINEL_HOST_MAX] = "";
    int port = 0;
    char big[600];
    (void)state;
    assert_int_equal(parse("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n", host, &port),
                     REDIS_SENTINEL_MASTER);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6380);
    assert_int_equal(parse("*-1\r\n", host, &port), REDIS_SENTINEL_UNKNOWN);
    assert_int_equal(parse("$-1\r\n", host, &port), REDIS_SENTINEL_UNKNOWN);
    static const char *const bad[] = {
        "-ERR No such master with that name\r\n",
        "-NOAUTH Authentication required.\r\n",
        "+OK\r\n",
        ":1\r\n",
        "*0\r\n",
        "*1\r\n$1\r\na\r\n",
        "*3\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\n2\r\n",
        "*2\r\n:1\r\n$1\r\n1\r\n",
        "*2\r\n$1\r\na\r\n:6379\r\n",
        "*2\r\n$0\r\n\r\n$4\r\n6379\r\n",
        "*2\r\n$1\r\na\r\n$0\r\n\r\n",
        "*2\r\n$1\r\na\r\n$1\r\n0\r\n",
        "*2\r\n$1\r\na\r\n$5\r\n65536\r\n",
        "*2\r\n$1\r\na\r\n$6\r\n000001\r\n",
        "*2\r\n$1\r\na\r\n$2\r\n-1\r\n",
        "*2\r\n$3\r\na b\r\n$2\r\n10\r\n",
        "*2\r\n$3\r\na\nb\r\n$2\r\n10\r\n",
        "*2\r\n$3\r\na\x7f"
        "b\r\n$2\r\n10\r\n",
        "*2\r\n*1\r\n$1\r\na\r\n$2\r\n10\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        strcpy(host, "unchanged");
        if (parse(bad[i], host, &port) != REDIS_SENTINEL_BAD)
            fail_msg("accepted reply %zu", i);
        assert_string_equal(host, "unchanged");
    }
    /* a host that does not fit */
    snprintf(big, sizeof(big), "*2\r\n$300\r\n%0300d\r\n$2\r\n10\r\n", 0);
    assert_int_equal(parse(big, host, &port), REDIS_SENTINEL_BAD);
    assert_int_equal(redis_sentinel_parse_master(NULL, host, sizeof(host), &port),
                     REDIS_SENTINEL_BAD);
}

static void test_role_and_stale(void **state)
{
    redisReply *r;
    (void)state;
    r = reply_of("*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n");
    assert_true(redis_sentinel_role_is_master(r));
    freeReplyObject(r);
    r = reply_of("*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:1\r\n");
    assert_false(redis_sentinel_role_is_master(r));
    freeReplyObject(r);
    r = reply_of("-ERR unknown command\r\n");
    assert_false(redis_sentinel_role_is_master(r));
    freeReplyObject(r);
    assert_false(redis_sentinel_role_is_master(NULL));

    assert_true(
        redis_sentinel_stale_error("READONLY You can't write against a read only replica.", 54));
    assert_true(redis_sentinel_stale_error("LOADING Redis is loading the dataset in memory", 46));
    assert_true(redis_sentinel_stale_error("MASTERDOWN Link with MASTER is down", 35));
    assert_true(redis_sentinel_stale_error("READONLY", 8));
    assert_false(redis_sentinel_stale_error("READONLYX", 9));
    assert_false(redis_sentinel_stale_error("ERR wrong number of arguments", 29));
    assert_false(redis_sentinel_stale_error("READ", 4));
    assert_false(redis_sentinel_stale_error(NULL, 0));
}

static void test_new(void **state)
{
    char *addrs[] = {"127.0.0.1:1", "bad"};
    struct redis_sentinel_config sc = {.mastername = "m", .addrs = addrs, .naddrs = 1};
    struct event_base *base = event_base_new();
    struct redis_sentinel *s;
    (void)state;
    s = redis_sentinel_new(base, &sc);
    assert_non_null(s);
    assert_string_equal(redis_sentinel_mastername(s), "m");
    redis_sentinel_free(s);
    sc.naddrs = 2;
    assert_null(redis_sentinel_new(base, &sc));
    sc.naddrs = 0;
    assert_null(redis_sentinel_new(base, &sc));
    sc.mastername = "";
    sc.naddrs = 1;
    assert_null(redis_sentinel_new(base, &sc));
    redis_sentinel_free(NULL);
    event_base_free(base);
}

/* ---- a sentinel on a thread: answers each connection's first command with reply ---- */

struct fake {
    int lfd, port;
    const char *reply;
    int conns;
    char seen[512]; /* what the last connection sent first */
    pthread_t th;
};

static void *fake_run(void *arg)
{
    struct fake *f = arg;
    for (int i = 0; i < f->conns; i++) {
        int fd = accept(f->lfd, NULL, NULL);
        char buf[512];
        ssize_t n;
        if (fd < 0)
            return NULL;
        n = read(fd, buf, sizeof(buf) - 1);
        if (n > 0) {
            buf[n] = '\0';
            snprintf(f->seen, sizeof(f->seen), "%s", buf);
            peer_send_all(fd, f->reply, strlen(f->reply));
        }
        while (read(fd, buf, sizeof(buf)) > 0)
            ;
        close(fd);
    }
    return NULL;
}

static void fake_start(struct fake *f, const char *reply, int conns)
{
    f->reply = reply;
    f->conns = conns;
    f->lfd = peer_listen(&f->port);
    assert_true(f->lfd >= 0);
    assert_int_equal(pthread_create(&f->th, NULL, fake_run, f), 0);
}

static void fake_stop(struct fake *f)
{
    pthread_join(f->th, NULL);
    close(f->lfd);
}

struct answer {
    int calls;
    char host[REDIS_SENTINEL_HOST_MAX];
    int port;
    struct event_base *base;
};

static void on_answer(void *ctx, const char *host, int port)
{
    struct answer *a = ctx;
    a->calls++;
    snprintf(a->host, sizeof(a->host), "%s", host ? host : "(none)");
    a->port = port;
    event_base_loopbreak(a->base);
}

#define MASTER_REPLY "*2\r\n$9\r\n127.0.0.9\r\n$4\r\n6390\r\n"

static void test_ask(void **state)
{
    struct fake f = {0};
    char down[32], up[32];
    char *addrs[] = {down, up};
    struct event_base *base = event_base_new();
    struct answer a = {.base = base};
    struct redis_sentinel_config sc = {.mastername = "mymaster", .addrs = addrs, .naddrs = 2};
    struct redis_sentinel *s;
    struct redis_sentinel_ask *q;
    char host[REDIS_SENTINEL_HOST_MAX];
    int port = 0;

    (void)state;
    fake_start(&f, MASTER_REPLY, 2);
    snprintf(down, sizeof(down), "127.0.0.1:%d", peer_free_port());
    snprintf(up, sizeof(up), "127.0.0.1:%d", f.port);
    s = redis_sentinel_new(base, &sc);
    assert_non_null(s);

    /* one sentinel refuses, the other names the master; never inline */
    q = redis_sentinel_ask(s, on_answer, &a);
    assert_non_null(q);
    assert_int_equal(a.calls, 0);
    event_base_dispatch(base);
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.host, "127.0.0.9");
    assert_int_equal(a.port, 6390);
    assert_non_null(strstr(f.seen, "get-master-addr-by-name"));
    assert_non_null(strstr(f.seen, "mymaster"));

    /* the blocking ask goes down the list */
    assert_true(redis_sentinel_ask_sync(s, host, sizeof(host), &port));
    assert_string_equal(host, "127.0.0.9");
    assert_int_equal(port, 6390);
    fake_stop(&f);

    /* nobody answers: host NULL, from the loop */
    snprintf(up, sizeof(up), "127.0.0.1:%d", peer_free_port());
    redis_sentinel_free(s);
    s = redis_sentinel_new(base, &sc);
    q = redis_sentinel_ask(s, on_answer, &a);
    assert_int_equal(a.calls, 1);
    event_base_dispatch(base);
    assert_int_equal(a.calls, 2);
    assert_string_equal(a.host, "(none)");
    assert_false(redis_sentinel_ask_sync(s, host, sizeof(host), &port));

    /* cancelled before any answer: no callback, nothing left behind */
    q = redis_sentinel_ask(s, on_answer, &a);
    redis_sentinel_cancel(q);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(a.calls, 2);
    redis_sentinel_free(s);
    event_base_free(base);
}

/* A sentinel that does not know the name, or answers with garbage, does not count. */
static void test_ask_unknown(void **state)
{
    struct fake f = {0};
    char up[32];
    char *addrs[] = {up};
    struct event_base *base = event_base_new();
    struct answer a = {.base = base};
    struct redis_sentinel_config sc = {
        .mastername = "other", .addrs = addrs, .naddrs = 1, .password = "pw"};
    struct redis_sentinel *s;

    (void)state;
    fake_start(&f, "+OK\r\n*-1\r\n", 1);
    snprintf(up, sizeof(up), "127.0.0.1:%d", f.port);
    s = redis_sentinel_new(base, &sc);
    assert_non_null(redis_sentinel_ask(s, on_answer, &a));
    event_base_dispatch(base);
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.host, "(none)");
    assert_non_null(strstr(f.seen, "AUTH"));
    fake_stop(&f);
    redis_sentinel_free(s);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_addr),
        cmocka_unit_test(test_parse_master),
        cmocka_unit_test(test_role_and_stale),
        cmocka_unit_test(test_new),
        cmocka_unit_test(test_ask),
        cmocka_unit_test(test_ask_unknown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
