/*
 * test_storage_oss: the OSS driver against a real OSS emulator process (test/oss/emulator.py,
 * started by the group setup on a free port with a temporary root; it verifies every
 * signature). Every storage operation, listing across pages, the multipart writer, move by
 * CopyObject and UploadPartCopy, error mapping, retries on injected faults, custom domains,
 * V1 and V4 signing, presigned URLs, threads, and no secret in any log line. Also the XML
 * reader's strictness on hand-written documents.
 *
 * The emulator runs with copy_limit 300 KiB, so moves above it need UploadPartCopy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "ossxml.h"
#include "storage.h"

#define AK "TESTAK"
#define SK "test-secret-Zq9vX2"
#define COPY_LIMIT (300 * 1024)

static pid_t emu_pid;
static int emu_port;
static char emu_dir[256];

/* ---- the emulator process ---- */

static int emu_start(void **state)
{
    snprintf(emu_dir, sizeof(emu_dir), "/tmp/regmirror-oss-XXXXXX");
    if (!mkdtemp(emu_dir))
        return -1;
    char root[300], portfile[300], copy[32];
    snprintf(root, sizeof(root), "%s/root", emu_dir);
    snprintf(portfile, sizeof(portfile), "%s/port", emu_dir);
    snprintf(copy, sizeof(copy), "%d", COPY_LIMIT);
    const char *script = getenv("REGMIRROR_OSS_EMULATOR");
    if (!script)
        script = "test/oss/emulator.py";
    emu_pid = fork();
    if (emu_pid < 0)
        return -1;
    if (emu_pid == 0) {
        /* the emulator goes when the test goes, however it ends */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execl("/usr/bin/python3", "python3", script, "--port", "0", "--root", root, "--ak", AK,
              "--sk", SK, "--bucket", "regbkt", "--cname", "img.localhost=regbkt", "--copy-limit",
              copy, "--port-file", portfile, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            int ok = fscanf(f, "%d", &emu_port);
            fclose(f);
            if (ok == 1)
                break;
        }
        usleep(50 * 1000);
    }
    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    return emu_port > 0 ? 0 : -1;
}

static int emu_stop(void **state)
{
    if (emu_pid > 0) {
        kill(emu_pid, SIGTERM);
        waitpid(emu_pid, NULL, 0);
    }
    char cmd[320];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", emu_dir);
    if (emu_dir[0] && system(cmd) != 0)
        return -1;
    return 0;
}

static size_t grow(char *p, size_t sz, size_t n, void *ud)
{
    char **buf = ud;
    size_t old = *buf ? strlen(*buf) : 0;
    char *b = realloc(*buf, old + sz * n + 1);
    assert_non_null(b);
    memcpy(b + old, p, sz * n);
    b[old + sz * n] = '\0';
    *buf = b;
    return sz * n;
}

/* A request to the emulator's control API (Host 127.0.0.1); the body is returned. */
static char *control(const char *method, const char *path, const char *body, long *status)
{
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", emu_port, path);
    CURL *h = curl_easy_init();
    char *out = NULL;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, grow);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
    if (body)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    long st = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
    if (status)
        *status = st;
    curl_easy_cleanup(h);
    return out ? out : strdup("");
}

static void stats_reset(void)
{
    free(control("POST", "/__stats/reset", "", NULL));
    free(control("DELETE", "/__faults", NULL, NULL));
}

/* Requests counted for op (e.g. "UploadPartCopy") since the last reset. */
static long stat_op(const char *op)
{
    char *s = control("GET", "/__stats", NULL, NULL);
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    assert_non_null(j);
    json_t *v = json_object_get(json_object_get(j, "ops"), op);
    long n = v ? (long)json_integer_value(v) : 0;
    json_decref(j);
    return n;
}

static long stat_auth(const char *kind)
{
    char *s = control("GET", "/__stats", NULL, NULL);
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    assert_non_null(j);
    json_t *v = json_object_get(json_object_get(j, "auth"), kind);
    long n = v ? (long)json_integer_value(v) : 0;
    json_decref(j);
    return n;
}

static void fault(const char *op, int count, const char *action, int status)
{
    char body[256];
    /* a 4xx fault carries a client error's code (OSS's ServiceUnavailable is a 503) */
    snprintf(body, sizeof(body),
             "{\"op\":\"%s\",\"count\":%d,\"action\":\"%s\",\"status\":%d,\"code\":\"%s\"}", op,
             count, action, status, status < 500 ? "InvalidArgument" : "ServiceUnavailable");
    long st = 0;
    free(control("POST", "/__faults", body, &st));
    assert_int_equal(st, 204);
}

/* Whether the emulator holds key in regbkt. */
static bool emu_has(const char *key)
{
    char *s = control("GET", "/__objects/regbkt", NULL, NULL);
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    assert_non_null(j);
    bool found = false;
    for (size_t i = 0; i < json_array_size(j) && !found; i++)
        found = strcmp(json_string_value(json_array_get(j, i)), key) == 0;
    json_decref(j);
    return found;
}

/* ---- drivers ---- */

static struct storage_oss_config base_cfg(void)
{
    static char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "localhost:%d", emu_port);
    struct storage_oss_config c = {
        .accesskeyid = AK,
        .accesskeysecret = SK,
        .region = "oss-cn-hangzhou",
        .endpoint = endpoint,
        .bucket = "regbkt",
        .secure = false,
        .chunksize = 5 * 1024 * 1024,
        .copy_limit = COPY_LIMIT,
        .retry_base_ms = 5,
    };
    return c;
}

static struct storage *driver(const struct storage_oss_config *c)
{
    struct storage *s = storage_oss_new(c);
    assert_non_null(s);
    return s;
}

static void put_str(struct storage *s, const char *path, const char *v)
{
    assert_int_equal(storage_put_content(s, path, v, strlen(v)), REG_OK);
}

static void expect_content(struct storage *s, const char *path, const void *want, size_t n)
{
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(storage_get_content(s, path, n + 1, &got, &len), REG_OK);
    assert_int_equal(len, n);
    assert_memory_equal(got, want, n);
    free(got);
}

static void fill(unsigned char *b, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b[i] = (unsigned char)x;
    }
}

/* ---- tests ---- */

static void test_basic_ops(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    struct storage *s = driver(&c);
    const char *odd = "/ops/dir one/file+plus (1)!*'~\xc3\xa9.txt";
    put_str(s, "/ops/a", "alpha");
    put_str(s, "/ops/sub/b", "beta");
    put_str(s, "/ops/sub/c/d", "delta");
    put_str(s, odd, "odd");
    expect_content(s, "/ops/a", "alpha", 5);
    expect_content(s, odd, "odd", 3);

    char *got = NULL;
    size_t len = 0;
    assert_int_equal(storage_get_content(s, "/ops/a", 4, &got, &len), REG_ERR_TOO_LARGE);
    assert_int_equal(storage_get_content(s, "/ops/nope", 10, &got, &len), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_get_content(s, "/ops/sub", 10, &got, &len), REG_ERR_NOT_FOUND);
    put_str(s, "/ops/empty", "");
    expect_content(s, "/ops/empty", "", 0);
    assert_int_equal(storage_get_content(s, "/ops/empty", 0, &got, &len), REG_OK);
    assert_int_equal(len, 0);
    free(got);
    assert_int_equal(storage_get_content(s, "/ops/a", 0, &got, &len), REG_ERR_TOO_LARGE);
    /* a key near OSS's 1023-byte limit, odd bytes and all, through copy and delete */
    char longp[1100] = "/ops/long/";
    while (strlen(longp) < 1000)
        strcat(longp, "\xc3\xa9 +");
    put_str(s, longp, "long");
    char longd[1100];
    snprintf(longd, sizeof(longd), "%s", longp);
    longd[5] = 'L';
    assert_int_equal(storage_move(s, longp, longd), REG_OK);
    expect_content(s, longd, "long", 4);
    assert_int_equal(storage_remove(s, "/ops/Long"), REG_OK);
    char toolong[1100] = "/";
    memset(toolong + 1, 'k', 1030);
    toolong[1031] = '\0';
    assert_int_equal(storage_put_content(s, toolong, "x", 1), REG_ERR_INTERNAL);

    struct storage_stat st;
    assert_int_equal(storage_stat(s, "/ops/a", &st), REG_OK);
    assert_int_equal(st.size, 5);
    assert_false(st.is_dir);
    assert_true(st.mtime > 1600000000);
    assert_int_equal(storage_stat(s, "/ops/sub", &st), REG_OK);
    assert_true(st.is_dir);
    assert_int_equal(storage_stat(s, "/ops/su", &st), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_stat(s, "/", &st), REG_OK);
    assert_true(st.is_dir);

    struct storage_list l = {0};
    assert_int_equal(storage_list(s, "/ops", &l), REG_OK);
    assert_int_equal(l.n, 4);
    assert_string_equal(l.names[0], "a");
    assert_string_equal(l.names[1], "dir one");
    assert_string_equal(l.names[2], "empty");
    assert_string_equal(l.names[3], "sub");
    storage_list_free(&l);
    assert_int_equal(storage_list(s, "/ops/sub", &l), REG_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.names[0], "b");
    assert_string_equal(l.names[1], "c");
    storage_list_free(&l);
    assert_int_equal(storage_list(s, "/ops/dir one", &l), REG_OK);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.names[0], "file+plus (1)!*'~\xc3\xa9.txt");
    storage_list_free(&l);
    assert_int_equal(storage_list(s, "/ops/nothing", &l), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_list(s, "/ops/a", &l), REG_ERR_NOT_FOUND);
    /* a name that is both an object and a directory is listed once */
    put_str(s, "/ops/sub/c", "file too");
    assert_int_equal(storage_list(s, "/ops/sub", &l), REG_OK);
    assert_int_equal(l.n, 2);
    storage_list_free(&l);

    /* move: CopyObject + DeleteObject, replacing the destination */
    put_str(s, "/ops/moved", "old");
    assert_int_equal(storage_move(s, "/ops/a", "/ops/moved"), REG_OK);
    expect_content(s, "/ops/moved", "alpha", 5);
    assert_int_equal(storage_stat(s, "/ops/a", &st), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_move(s, "/ops/a", "/ops/x"), REG_ERR_NOT_FOUND);
    assert_int_equal(stat_op("CopyObject"), 2);

    /* remove: a file, then a tree */
    assert_int_equal(storage_remove(s, "/ops/moved"), REG_OK);
    assert_int_equal(storage_stat(s, "/ops/moved", &st), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_remove(s, "/ops/sub"), REG_OK);
    assert_int_equal(storage_stat(s, "/ops/sub", &st), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_stat(s, "/ops/sub/c/d", &st), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_remove(s, "/ops/sub"), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_remove(s, "/ops"), REG_OK);
    assert_int_equal(storage_list(s, "/ops", &l), REG_ERR_NOT_FOUND);

    int fd = -1;
    uint64_t size = 0;
    assert_int_equal(storage_open_read(s, "/x", &fd, &size), REG_ERR_UNSUPPORTED);
    assert_int_equal(stat_auth("v4-header") > 0, 1);
    assert_int_equal(stat_auth("v1-header"), 0);
    storage_free(s);
}

static void test_list_pages(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    c.list_max = 7;
    c.delete_max = 4;
    struct storage *s = driver(&c);
    char path[64];
    for (int i = 0; i < 30; i++) {
        snprintf(path, sizeof(path), "/pages/f%02d", i);
        put_str(s, path, "x");
    }
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "/pages/d%d/inner", i);
        put_str(s, path, "y");
    }
    struct storage_list l = {0};
    assert_int_equal(storage_list(s, "/pages", &l), REG_OK);
    assert_int_equal(l.n, 35);
    assert_string_equal(l.names[0], "d0");
    assert_string_equal(l.names[5], "f00");
    assert_string_equal(l.names[34], "f29");
    storage_list_free(&l);
    assert_true(stat_op("ListObjectsV2") >= 5);
    assert_int_equal(storage_remove(s, "/pages"), REG_OK);
    assert_int_equal(stat_op("DeleteMultipleObjects"), 10); /* 35 keys, 4 a batch, 7 a page */
    assert_int_equal(storage_list(s, "/pages", &l), REG_ERR_NOT_FOUND);
    storage_free(s);
}

static void test_list_over_1000(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    struct storage *s = driver(&c);
    char path[64];
    for (int i = 0; i < 1003; i++) {
        snprintf(path, sizeof(path), "/big/k%04d", i);
        put_str(s, path, "v");
    }
    struct storage_list l = {0};
    assert_int_equal(storage_list(s, "/big", &l), REG_OK);
    assert_int_equal(l.n, 1003);
    assert_string_equal(l.names[1002], "k1002");
    storage_list_free(&l);
    assert_int_equal(stat_op("ListObjectsV2"), 2);
    assert_int_equal(storage_remove(s, "/big"), REG_OK);
    assert_int_equal(stat_op("DeleteMultipleObjects"), 2);
    assert_int_equal(storage_list(s, "/big", &l), REG_ERR_NOT_FOUND);
    storage_free(s);
}

struct collect {
    unsigned char *buf;
    size_t len, cap;
    int stop_after; /* stop after this many calls (0: never) */
    int calls;
};

static int collect_cb(void *ctx, const void *data, size_t len)
{
    struct collect *c = ctx;
    c->calls++;
    if (c->len + len > c->cap) {
        c->cap = (c->len + len) * 2;
        c->buf = realloc(c->buf, c->cap);
        assert_non_null(c->buf);
    }
    memcpy(c->buf + c->len, data, len);
    c->len += len;
    return c->stop_after && c->calls >= c->stop_after;
}

static void test_writer_multipart(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    struct storage *s = driver(&c);
    size_t total = 20 * 1024 * 1024 + 123;
    unsigned char *data = malloc(total);
    assert_non_null(data);
    fill(data, total, 7);
    struct storage_writer *w = NULL;
    assert_int_equal(storage_open_writer(s, "/mp/blob", false, &w), REG_OK);
    size_t off = 0, step = 1;
    while (off < total) {
        size_t n = step < total - off ? step : total - off;
        assert_int_equal(storage_writer_write(w, data + off, n), REG_OK);
        off += n;
        step = step * 3 + 7; /* uneven pieces, up to several MB */
        if (step > 3 * 1024 * 1024)
            step = 1000;
    }
    assert_int_equal(storage_writer_size(w), total);
    /* the object appears only at close */
    struct storage_stat st;
    assert_int_equal(storage_stat(s, "/mp/blob", &st), REG_ERR_NOT_FOUND);
    assert_int_equal(storage_writer_close(w), REG_OK);
    assert_int_equal(stat_op("InitiateMultipartUpload"), 1);
    assert_int_equal(stat_op("UploadPart"), 5);
    assert_int_equal(stat_op("CompleteMultipartUpload"), 1);
    assert_int_equal(storage_stat(s, "/mp/blob", &st), REG_OK);
    assert_int_equal(st.size, total);

    /* read it back streamed, whole and in ranges */
    struct collect col = {0};
    assert_int_equal(storage_read_range(s, "/mp/blob", 0, 0, collect_cb, &col), REG_OK);
    assert_int_equal(col.len, total);
    assert_memory_equal(col.buf, data, total);
    col.len = 0;
    assert_int_equal(storage_read_range(s, "/mp/blob", 1000, 5000, collect_cb, &col), REG_OK);
    assert_int_equal(col.len, 5000);
    assert_memory_equal(col.buf, data + 1000, 5000);
    col.len = 0;
    assert_int_equal(storage_read_range(s, "/mp/blob", total - 10, 0, collect_cb, &col), REG_OK);
    assert_int_equal(col.len, 10);
    assert_memory_equal(col.buf, data + total - 10, 10);
    col.len = 0;
    assert_int_equal(storage_read_range(s, "/mp/blob", total, 0, collect_cb, &col), REG_OK);
    assert_int_equal(col.len, 0);
    assert_int_equal(storage_read_range(s, "/mp/blob", total + 1, 0, collect_cb, &col),
                     REG_ERR_RANGE_INVALID);
    assert_int_equal(storage_read_range(s, "/mp/none", 0, 0, collect_cb, &col), REG_ERR_NOT_FOUND);
    /* the sink can stop a read */
    col.len = 0;
    col.stop_after = 1;
    col.calls = 0;
    assert_int_equal(storage_read_range(s, "/mp/blob", 0, 0, collect_cb, &col), REG_ERR_INTERNAL);
    free(col.buf);
    free(data);
    assert_int_equal(storage_remove(s, "/mp"), REG_OK);
    storage_free(s);
}

static void test_writer_small_and_append(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    struct storage *s = driver(&c);
    struct storage_writer *w = NULL;
    /* truncate + nothing written: an empty object */
    assert_int_equal(storage_open_writer(s, "/wr/empty", false, &w), REG_OK);
    assert_int_equal(storage_writer_close(w), REG_OK);
    expect_content(s, "/wr/empty", "", 0);
    /* small: one PutObject at close, then appends */
    assert_int_equal(storage_open_writer(s, "/wr/small", true, &w), REG_OK);
    assert_int_equal(storage_writer_write(w, "hello ", 6), REG_OK);
    assert_int_equal(storage_writer_close(w), REG_OK);
    assert_int_equal(storage_open_writer(s, "/wr/small", true, &w), REG_OK);
    assert_int_equal(storage_writer_size(w), 6);
    assert_int_equal(storage_writer_write(w, "world", 5), REG_OK);
    assert_int_equal(storage_writer_size(w), 11);
    assert_int_equal(storage_writer_close(w), REG_OK);
    expect_content(s, "/wr/small", "hello world", 11);
    /* append that writes nothing leaves the object as it is */
    assert_int_equal(storage_open_writer(s, "/wr/small", true, &w), REG_OK);
    assert_int_equal(storage_writer_close(w), REG_OK);
    expect_content(s, "/wr/small", "hello world", 11);
    assert_int_equal(stat_op("InitiateMultipartUpload"), 0);
    /* truncate drops the old bytes */
    assert_int_equal(storage_open_writer(s, "/wr/small", false, &w), REG_OK);
    assert_int_equal(storage_writer_write(w, "new", 3), REG_OK);
    assert_int_equal(storage_writer_close(w), REG_OK);
    expect_content(s, "/wr/small", "new", 3);

    /* append to an object over chunksize: its bytes are carried by UploadPartCopy */
    size_t big = 6 * 1024 * 1024 + 5, more = 1234;
    unsigned char *data = malloc(big + more);
    fill(data, big + more, 3);
    assert_int_equal(storage_put_content(s, "/wr/big", data, big), REG_OK);
    stats_reset();
    assert_int_equal(storage_open_writer(s, "/wr/big", true, &w), REG_OK);
    assert_int_equal(storage_writer_size(w), big);
    assert_int_equal(storage_writer_write(w, data + big, more), REG_OK);
    assert_int_equal(storage_writer_close(w), REG_OK);
    assert_int_equal(stat_op("UploadPartCopy"), 1);
    assert_int_equal(stat_op("UploadPart"), 1);
    assert_int_equal(stat_op("GetObject"), 0);
    expect_content(s, "/wr/big", data, big + more);
    free(data);
    assert_int_equal(storage_remove(s, "/wr"), REG_OK);
    storage_free(s);
}

static void test_writer_failure_aborts(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    c.chunksize = 100 * 1024;
    struct storage *s = driver(&c);
    unsigned char *data = malloc(350 * 1024);
    fill(data, 350 * 1024, 5);
    struct storage_writer *w = NULL;
    assert_int_equal(storage_open_writer(s, "/fail/blob", false, &w), REG_OK);
    assert_int_equal(storage_writer_write(w, data, 150 * 1024), REG_OK); /* part 1 sent */
    fault("UploadPart", 1, "error", 400);
    enum regerr r = storage_writer_write(w, data + 150 * 1024, 200 * 1024);
    assert_int_not_equal(r, REG_OK);
    assert_int_equal(storage_writer_write(w, "x", 1), r); /* the failure sticks */
    assert_int_not_equal(storage_writer_close(w), REG_OK);
    assert_int_equal(stat_op("AbortMultipartUpload"), 1);
    assert_int_equal(stat_op("CompleteMultipartUpload"), 0);
    struct storage_stat st;
    assert_int_equal(storage_stat(s, "/fail/blob", &st), REG_ERR_NOT_FOUND);
    /* every part lands: 350 KiB in 100 KiB chunks is 4 parts */
    stats_reset();
    assert_int_equal(storage_open_writer(s, "/fail/blob", false, &w), REG_OK);
    assert_int_equal(storage_writer_write(w, data, 350 * 1024), REG_OK);
    assert_int_equal(storage_writer_close(w), REG_OK);
    assert_int_equal(stat_op("UploadPart"), 4);
    expect_content(s, "/fail/blob", data, 350 * 1024);
    free(data);
    assert_int_equal(storage_remove(s, "/fail"), REG_OK);
    storage_free(s);
}

static void test_move_large(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    c.chunksize = 100 * 1024; /* copy parts of max(copy_limit, 2 chunks) = 300 KiB */
    struct storage *s = driver(&c);
    size_t n = 1024 * 1024 + 77;
    unsigned char *data = malloc(n);
    fill(data, n, 9);
    assert_int_equal(storage_put_content(s, "/mv/src", data, n), REG_OK);
    assert_int_equal(storage_move(s, "/mv/src", "/mv/dst/blob"), REG_OK);
    assert_int_equal(stat_op("CopyObject"), 0);
    assert_int_equal(stat_op("UploadPartCopy"), 4);
    assert_int_equal(stat_op("DeleteObject"), 1);
    expect_content(s, "/mv/dst/blob", data, n);
    struct storage_stat st;
    assert_int_equal(storage_stat(s, "/mv/src", &st), REG_ERR_NOT_FOUND);
    /* a move onto itself keeps the object */
    assert_int_equal(storage_move(s, "/mv/dst/blob", "/mv/dst/blob"), REG_OK);
    expect_content(s, "/mv/dst/blob", data, n);
    free(data);
    assert_int_equal(storage_remove(s, "/mv"), REG_OK);
    storage_free(s);
}

static void test_retries_and_errors(void **state)
{
    stats_reset();
    struct storage_oss_config c = base_cfg();
    struct storage *s = driver(&c);
    /* 5xx twice, then it works */
    fault("PutObject", 2, "error", 503);
    put_str(s, "/retry/a", "v");
    assert_int_equal(stat_op("PutObject"), 3);
    /* connection cut (no answer), then it works */
    fault("GetObject", 1, "close", 0);
    expect_content(s, "/retry/a", "v", 1);
    fault("HeadObject", 1, "close", 0);
    struct storage_stat st;
    assert_int_equal(storage_stat(s, "/retry/a", &st), REG_OK);
    /* always failing: UNAVAILABLE after the retries */
    stats_reset();
    fault("PutObject", 100, "error", 500);
    assert_int_equal(storage_put_content(s, "/retry/b", "x", 1), REG_ERR_UNAVAILABLE);
    assert_int_equal(stat_op("PutObject"), 5); /* 1 + 4 retries */
    stats_reset();
    /* a 4xx is not retried */
    fault("PutObject", 1, "error", 400);
    assert_int_equal(storage_put_content(s, "/retry/b", "x", 1), REG_ERR_INTERNAL);
    assert_int_equal(stat_op("PutObject"), 1);
    /* the wrong secret: SignatureDoesNotMatch, an internal error, not retried */
    struct storage_oss_config bad = base_cfg();
    bad.accesskeysecret = "wrong-secret-Kp3";
    struct storage *b = driver(&bad);
    stats_reset();
    assert_int_equal(storage_put_content(b, "/retry/c", "x", 1), REG_ERR_INTERNAL);
    assert_int_equal(storage_stat(b, "/retry/a", &st), REG_ERR_INTERNAL);
    assert_int_equal(stat_op("PutObject"), 1);
    storage_free(b);
    /* an unknown bucket */
    struct storage_oss_config nb = base_cfg();
    nb.bucket = "nosuchbucket";
    b = driver(&nb);
    assert_int_equal(storage_put_content(b, "/x", "x", 1), REG_ERR_INTERNAL);
    storage_free(b);
    assert_int_equal(storage_remove(s, "/retry"), REG_OK);
    storage_free(s);
}

static void test_error_mapping(void **state)
{
    assert_int_equal(ossxml_regerr(404, "NoSuchKey"), REG_ERR_NOT_FOUND);
    assert_int_equal(ossxml_regerr(404, "NoSuchUpload"), REG_ERR_NOT_FOUND);
    assert_int_equal(ossxml_regerr(404, ""), REG_ERR_NOT_FOUND);
    assert_int_equal(ossxml_regerr(404, "NoSuchBucket"), REG_ERR_INTERNAL);
    assert_int_equal(ossxml_regerr(403, "SignatureDoesNotMatch"), REG_ERR_INTERNAL);
    assert_int_equal(ossxml_regerr(403, "AccessDenied"), REG_ERR_INTERNAL);
    assert_int_equal(ossxml_regerr(400, "EntityTooLarge"), REG_ERR_TOO_LARGE);
    assert_int_equal(ossxml_regerr(416, "InvalidRange"), REG_ERR_RANGE_INVALID);
    assert_int_equal(ossxml_regerr(503, "ServiceUnavailable"), REG_ERR_UNAVAILABLE);
    assert_int_equal(ossxml_regerr(500, NULL), REG_ERR_UNAVAILABLE);
    assert_int_equal(ossxml_regerr(429, ""), REG_ERR_UNAVAILABLE);
}

static void test_signing_v1_and_domains(void **state)
{
    stats_reset();
    /* V1 header signatures */
    struct storage_oss_config c = base_cfg();
    c.sigversion = 1;
    struct storage *s = driver(&c);
    put_str(s, "/v1/a b+c", "one");
    expect_content(s, "/v1/a b+c", "one", 3);
    struct storage_list l = {0};
    assert_int_equal(storage_list(s, "/v1", &l), REG_OK);
    assert_int_equal(l.n, 1);
    storage_list_free(&l);
    assert_int_equal(storage_move(s, "/v1/a b+c", "/v1/d"), REG_OK);
    assert_int_equal(storage_remove(s, "/v1"), REG_OK);
    assert_true(stat_auth("v1-header") >= 6);
    storage_free(s);

    /* the bucket's custom domain, flagged */
    char ep[64];
    snprintf(ep, sizeof(ep), "http://img.localhost:%d/", emu_port);
    c = base_cfg();
    c.endpoint = ep;
    c.cname = true;
    c.secure = true; /* the endpoint's scheme wins */
    s = driver(&c);
    put_str(s, "/cname/x", "via cname");
    expect_content(s, "/cname/x", "via cname", 9);
    assert_int_equal(storage_remove(s, "/cname"), REG_OK);
    storage_free(s);

    /* an endpoint that already starts with "<bucket>." is used as is */
    snprintf(ep, sizeof(ep), "regbkt.localhost:%d", emu_port);
    c = base_cfg();
    c.endpoint = ep;
    s = driver(&c);
    put_str(s, "/vh/x", "as is");
    expect_content(s, "/vh/x", "as is", 5);
    assert_int_equal(storage_remove(s, "/vh"), REG_OK);
    storage_free(s);

    /* rootdirectory prefixes every key */
    c = base_cfg();
    c.rootdirectory = "/reg/root/";
    s = driver(&c);
    put_str(s, "/docker/registry/v2/x", "rooted");
    assert_true(emu_has("reg/root/docker/registry/v2/x"));
    assert_int_equal(storage_list(s, "/", &l), REG_OK);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.names[0], "docker");
    storage_list_free(&l);
    assert_int_equal(storage_remove(s, "/docker"), REG_OK);
    assert_false(emu_has("reg/root/docker/registry/v2/x"));
    storage_free(s);
}

static void test_config_errors(void **state)
{
    struct storage_oss_config c = base_cfg();
    c.bucket = NULL;
    assert_null(storage_oss_new(&c));
    c = base_cfg();
    c.accesskeysecret = "";
    assert_null(storage_oss_new(&c));
    c = base_cfg();
    c.region = NULL; /* V4 needs a region; the endpoint does not name one */
    assert_null(storage_oss_new(&c));
    c.endpoint = "oss-cn-beijing-internal.aliyuncs.com";
    struct storage *s = storage_oss_new(&c); /* region from the endpoint */
    assert_non_null(s);
    storage_free(s);
    c = base_cfg();
    c.endpoint = NULL;
    c.region = "cn-shanghai";
    c.internal = true;
    c.secure = true;
    s = storage_oss_new(&c);
    assert_non_null(s);
    char *url = NULL;
    assert_int_equal(storage_presign_get(s, "/k", 60, &url), REG_OK);
    assert_non_null(strstr(url, "https://regbkt.oss-cn-shanghai-internal.aliyuncs.com/k?"));
    assert_non_null(strstr(url, "cn-shanghai%2Foss%2Faliyun_v4_request"));
    free(url);
    storage_free(s);
    c = base_cfg();
    c.chunksize = 1024;
    assert_null(storage_oss_new(&c));
}

static size_t sink_to_buf(char *p, size_t sz, size_t n, void *ud)
{
    return grow(p, sz, n, ud);
}

/* GET of a URL without any signing of our own; the body. */
static char *plain_get(const char *url, long *status)
{
    CURL *h = curl_easy_init();
    char *out = NULL;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_to_buf);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(h);
    return out ? out : strdup("");
}

static void test_presign(void **state)
{
    stats_reset();
    for (int v = 1; v <= 4; v += 3) {
        struct storage_oss_config c = base_cfg();
        c.sigversion = v;
        struct storage *s = driver(&c);
        put_str(s, "/pre/dir one/obj+1", "presigned body");
        char *url = NULL;
        assert_int_equal(storage_presign_get(s, "/pre/dir one/obj+1", 300, &url), REG_OK);
        long st = 0;
        char *body = plain_get(url, &st);
        assert_int_equal(st, 200);
        assert_string_equal(body, "presigned body");
        free(body);
        assert_null(strstr(url, SK));
        /* tampered: refused */
        char *sig = strstr(url, v == 1 ? "Signature=" : "x-oss-signature=");
        assert_non_null(sig);
        sig += v == 1 ? 10 : 16;
        *sig = *sig == 'A' ? 'B' : 'A';
        body = plain_get(url, &st);
        assert_int_equal(st, 403);
        free(body);
        free(url);
        assert_int_equal(storage_presign_get(s, "/pre/x", 0, &url), REG_ERR_INTERNAL);
        assert_int_equal(storage_remove(s, "/pre"), REG_OK);
        storage_free(s);
    }
    assert_int_equal(stat_auth("v1-query"), 2);
    assert_int_equal(stat_auth("v4-query"), 2);
}

struct thread_arg {
    struct storage *s;
    int id;
    int failures;
};

static void *worker(void *p)
{
    struct thread_arg *a = p;
    char path[64], val[64];
    for (int i = 0; i < 15; i++) {
        snprintf(path, sizeof(path), "/threads/t%d/k%d", a->id, i);
        snprintf(val, sizeof(val), "value %d %d", a->id, i);
        char *got = NULL;
        size_t len = 0;
        struct storage_stat st;
        if (storage_put_content(a->s, path, val, strlen(val)) != REG_OK ||
            storage_get_content(a->s, path, 100, &got, &len) != REG_OK || len != strlen(val) ||
            memcmp(got, val, len) != 0 || storage_stat(a->s, path, &st) != REG_OK || st.size != len)
            a->failures++;
        free(got);
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct storage_oss_config c = base_cfg();
    struct storage *s = driver(&c);
    pthread_t t[8];
    struct thread_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (struct thread_arg){s, i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    struct storage_list l = {0};
    assert_int_equal(storage_list(s, "/threads", &l), REG_OK);
    assert_int_equal(l.n, 8);
    storage_list_free(&l);
    assert_int_equal(storage_remove(s, "/threads"), REG_OK);
    storage_free(s);
}

/* Runs a failing and succeeding mix with debug logging into a file; no secret in it. */
static void test_secret_never_logged(void **state)
{
    char logpath[300];
    snprintf(logpath, sizeof(logpath), "%s/log", emu_dir);
    fflush(stderr);
    int saved = dup(2);
    int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    log_setup(LOG_DEBUG, LOG_FORMAT_TEXT);
    for (int v = 1; v <= 4; v += 3) {
        struct storage_oss_config c = base_cfg();
        c.sigversion = v;
        struct storage *s = driver(&c);
        fault("PutObject", 1, "error", 503);
        put_str(s, "/sec/a", "v");
        fault("GetObject", 1, "close", 0);
        expect_content(s, "/sec/a", "v", 1);
        struct storage_stat st;
        storage_stat(s, "/sec/none", &st);
        char *url = NULL;
        assert_int_equal(storage_presign_get(s, "/sec/a", 60, &url), REG_OK);
        free(url);
        assert_int_equal(storage_remove(s, "/sec"), REG_OK);
        storage_free(s);
        c.accesskeysecret = "wrong-secret-Kp3";
        s = driver(&c);
        assert_int_equal(storage_put_content(s, "/sec/b", "x", 1), REG_ERR_INTERNAL);
        storage_stat(s, "/sec/b", &st);
        storage_free(s);
    }
    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *f = fopen(logpath, "r");
    assert_non_null(f);
    char line[8192];
    int lines = 0, sigerr = 0;
    while (fgets(line, sizeof(line), f)) {
        lines++;
        assert_null(strstr(line, SK));
        assert_null(strstr(line, "wrong-secret-Kp3"));
        assert_null(strstr(line, "Signature="));
        assert_null(strstr(line, "OSS4-HMAC-SHA256 Credential"));
        if (strstr(line, "SignatureDoesNotMatch"))
            sigerr++;
    }
    fclose(f);
    assert_true(lines > 20);  /* debug lines were written */
    assert_true(sigerr >= 2); /* and the failures named their cause */
}

/* ---- the XML reader on hand-written documents ---- */

static void test_xml_reader(void **state)
{
    const char *err =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>NoSuchKey</Code>\n"
        "  <Message>The specified key does not exist &amp; &lt;x&gt; &#233;"
        "</Message>\n  <RequestId>5C3D9175B6FC201293AD</RequestId>\n"
        "  <HostId>b.oss.aliyuncs.com</HostId>\n  <Key/>\n  <EC>0026-00000001</EC>\n"
        "</Error>\n";
    struct ossxml_error e;
    assert_int_equal(ossxml_parse_error(err, strlen(err), &e), 0);
    assert_string_equal(e.code, "NoSuchKey");
    assert_string_equal(e.message, "The specified key does not exist & <x> \xc3\xa9");
    assert_string_equal(e.request_id, "5C3D9175B6FC201293AD");
    assert_string_equal(e.ec, "0026-00000001");
    assert_int_equal(ossxml_parse_error("<Other/>", 8, &e), -1);

    const char *list =
        "<?xml version=\"1.0\"?><ListBucketResult><Name>b</Name><Prefix>a%2F</Prefix>"
        "<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        "<NextContinuationToken>tok+en</NextContinuationToken>"
        "<Contents><Key>a/x%20y%2Bz</Key><Size>12</Size><ETag>\"AB\"</ETag></Contents>"
        "<Contents><Size>3</Size><Key>a/%C3%A9</Key></Contents>"
        "<CommonPrefixes><Prefix>a/d/</Prefix></CommonPrefixes></ListBucketResult>";
    struct ossxml_list l;
    assert_int_equal(ossxml_parse_list(list, strlen(list), &l), 0);
    assert_int_equal(l.nkeys, 2);
    assert_string_equal(l.keys[0], "a/x y+z");
    assert_int_equal(l.sizes[0], 12);
    assert_string_equal(l.keys[1], "a/\xc3\xa9");
    assert_int_equal(l.nprefixes, 1);
    assert_string_equal(l.prefixes[0], "a/d/");
    assert_true(l.truncated);
    assert_string_equal(l.next, "tok+en");
    ossxml_list_free(&l);

    char id[64];
    const char *init = "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                       "<UploadId>0004B9894A22E5B1888A1E29F823****</UploadId>"
                       "</InitiateMultipartUploadResult>";
    assert_int_equal(
        ossxml_find(init, strlen(init), "InitiateMultipartUploadResult/UploadId", id, sizeof(id)),
        0);
    assert_string_equal(id, "0004B9894A22E5B1888A1E29F823****");
    assert_int_equal(ossxml_find(init, strlen(init), "X/Y", id, sizeof(id)), 1);
    assert_int_equal(
        ossxml_find(init, strlen(init), "InitiateMultipartUploadResult/UploadId", id, 8), -1);

    /* refused */
    const char *bad[] = {
        "",
        "<a>",
        "<a></b>",
        "<a>x<b/></a>",
        "<a><b/>x</a>",
        "<!DOCTYPE a><a/>",
        "<a><![CDATA[x]]></a>",
        "<a>&bogus;</a>",
        "<a>&#0;</a>",
        "<a>&#xD800;</a>",
        "<a/><b/>",
        "<a/>trailing",
        "<a x=1/>",
        "<a><?pi?></a>",
        "<1a/>",
        "<a><b><c><d><e><f><g><h><i><j><k><l><m><n><o><p><q/></p></o></n></m></l></k></j></i>"
        "</h></g></f></e></d></c></b></a>",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ossxml_parse_error(bad[i], strlen(bad[i]), &e), -1);
    const char *badlist[] = {
        "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
        "<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>",
        "<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>%zz</Key></Contents>"
        "</ListBucketResult>",
        "<ListBucketResult><Contents><Key>a</Key><Key>b</Key></Contents></ListBucketResult>",
        "<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>",
        "<Error/>",
    };
    for (size_t i = 0; i < sizeof(badlist) / sizeof(badlist[0]); i++)
        assert_int_equal(ossxml_parse_list(badlist[i], strlen(badlist[i]), &l), -1);
    /* comments and attributes are skipped */
    const char *ok = "<!-- c --><a k=\"v &amp; w\" j='1'><!-- x --><b>t</b> </a><!-- end -->";
    assert_int_equal(ossxml_find(ok, strlen(ok), "a/b", id, sizeof(id)), 0);
    assert_string_equal(id, "t");
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_xml_reader),
        cmocka_unit_test(test_error_mapping),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_ops),
        cmocka_unit_test(test_list_pages),
        cmocka_unit_test(test_list_over_1000),
        cmocka_unit_test(test_writer_multipart),
        cmocka_unit_test(test_writer_small_and_append),
        cmocka_unit_test(test_writer_failure_aborts),
        cmocka_unit_test(test_move_large),
        cmocka_unit_test(test_retries_and_errors),
        cmocka_unit_test(test_signing_v1_and_domains),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_presign),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_secret_never_logged),
    };
    int failed = cmocka_run_group_tests_name("ossxml", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("storage_oss", tests, emu_start, emu_stop);
    return failed;
}
