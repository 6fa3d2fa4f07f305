/* The forward-all storage wrapper: every op reaches the inner store, an override replaces its
 * forwarder, optional ops follow the inner's, is_local and the name are the inner's. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "storage.h"
#include "storage_wrap.h"

/* The inner store: each op notes that it ran and what it was given. */
enum {
    OP_GET,
    OP_PUT,
    OP_STAT,
    OP_LIST,
    OP_MOVE,
    OP_REMOVE,
    OP_OPEN_READ,
    OP_OPEN_WRITER,
    OP_PRESIGN,
    OP_READ_RANGE,
    OP_FREE,
    OP__COUNT
};
static int calls[OP__COUNT];
static const char *last_path;

static enum regerr i_get_content(struct storage *s, const char *path, size_t max, char **out,
                                 size_t *len)
{
    calls[OP_GET]++;
    last_path = path;
    *out = strdup("abc");
    *len = 3;
    return max == 7 ? REG_OK : REG_ERR_INTERNAL;
}
static enum regerr i_put_content(struct storage *s, const char *path, const void *data, size_t len)
{
    calls[OP_PUT]++;
    last_path = path;
    return len == 2 && memcmp(data, "xy", 2) == 0 ? REG_OK : REG_ERR_INTERNAL;
}
static enum regerr i_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    calls[OP_STAT]++;
    last_path = path;
    out->size = 42;
    return REG_ERR_NOT_FOUND;
}
static enum regerr i_list(struct storage *s, const char *path, struct storage_list *out)
{
    calls[OP_LIST]++;
    last_path = path;
    out->n = 0;
    out->names = NULL;
    return REG_OK;
}
static enum regerr i_move(struct storage *s, const char *src, const char *dst)
{
    calls[OP_MOVE]++;
    last_path = dst;
    return strcmp(src, "/a") == 0 ? REG_OK : REG_ERR_INTERNAL;
}
static enum regerr i_remove(struct storage *s, const char *path)
{
    calls[OP_REMOVE]++;
    last_path = path;
    return REG_ERR_UNAVAILABLE;
}
static enum regerr i_open_read(struct storage *s, const char *path, int *fd, uint64_t *size)
{
    calls[OP_OPEN_READ]++;
    last_path = path;
    *fd = 9;
    *size = 5;
    return REG_OK;
}
static enum regerr i_open_writer(struct storage *s, const char *path, bool append,
                                 struct storage_writer **out)
{
    calls[OP_OPEN_WRITER]++;
    last_path = path;
    *out = NULL;
    return append ? REG_OK : REG_ERR_INTERNAL;
}
static enum regerr i_presign_get(struct storage *s, const char *path, long expires_s, char **url)
{
    calls[OP_PRESIGN]++;
    last_path = path;
    *url = strdup("https://x/");
    return expires_s == 60 ? REG_OK : REG_ERR_INTERNAL;
}
static enum regerr i_read_range(struct storage *s, const char *path, uint64_t off, uint64_t len,
                                storage_read_cb cb, void *ctx)
{
    calls[OP_READ_RANGE]++;
    last_path = path;
    return cb(ctx, "z", 1) == 0 && off == 1 && len == 2 ? REG_OK : REG_ERR_INTERNAL;
}
static void i_free(struct storage *s)
{
    calls[OP_FREE]++;
}

static const struct storage_ops full_ops = {
    .name = "inner",
    .get_content = i_get_content,
    .put_content = i_put_content,
    .stat = i_stat,
    .list = i_list,
    .move = i_move,
    .remove = i_remove,
    .open_read = i_open_read,
    .open_writer = i_open_writer,
    .presign_get = i_presign_get,
    .read_range = i_read_range,
    .free = i_free,
};

static int sink(void *ctx, const void *data, size_t len)
{
    (*(size_t *)ctx) += len;
    return 0;
}

static void reset(void)
{
    memset(calls, 0, sizeof(calls));
    last_path = NULL;
}

static void test_every_op_forwards(void **state)
{
    reset();
    struct storage inner = {&full_ops, true};
    struct storage_wrap *w = storage_wrap_new(&inner, sizeof(*w), NULL, NULL);
    assert_non_null(w);
    struct storage *st = &w->base;
    assert_ptr_equal(storage_wrap_inner(st), &inner);
    assert_string_equal(st->ops->name, "inner");

    char *out = NULL;
    size_t len = 0;
    assert_int_equal(storage_get_content(st, "/g", 7, &out, &len), REG_OK);
    assert_string_equal(out, "abc");
    assert_int_equal(len, 3);
    assert_string_equal(last_path, "/g");
    free(out);
    assert_int_equal(storage_put_content(st, "/p", "xy", 2), REG_OK);
    assert_string_equal(last_path, "/p");
    struct storage_stat sst = {0};
    assert_int_equal(storage_stat(st, "/s", &sst), REG_ERR_NOT_FOUND);
    assert_int_equal(sst.size, 42);
    struct storage_list l;
    assert_int_equal(storage_list(st, "/l", &l), REG_OK);
    assert_int_equal(l.n, 0);
    assert_int_equal(storage_move(st, "/a", "/b"), REG_OK);
    assert_string_equal(last_path, "/b");
    assert_int_equal(storage_remove(st, "/r"), REG_ERR_UNAVAILABLE);
    int fd = -1;
    uint64_t size = 0;
    assert_int_equal(storage_open_read(st, "/o", &fd, &size), REG_OK);
    assert_int_equal(fd, 9);
    assert_int_equal(size, 5);
    struct storage_writer *wr = (struct storage_writer *)1;
    assert_int_equal(storage_open_writer(st, "/w", true, &wr), REG_OK);
    assert_null(wr);
    char *url = NULL;
    assert_int_equal(storage_presign_get(st, "/u", 60, &url), REG_OK);
    assert_string_equal(url, "https://x/");
    free(url);
    size_t got = 0;
    assert_int_equal(storage_read_range(st, "/rr", 1, 2, sink, &got), REG_OK);
    assert_int_equal(got, 1);
    assert_string_equal(last_path, "/rr");

    for (int op = 0; op < OP_FREE; op++)
        assert_int_equal(calls[op], 1);
    storage_free(st); /* frees the inner store too */
    assert_int_equal(calls[OP_FREE], 1);
}

/* The user's struct around the wrapper, with an override that counts and calls through. */
struct counting {
    struct storage_wrap wrap;
    int stats;
    int *disposed;
};

static enum regerr c_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    ((struct counting *)storage_wrap_of(s))->stats++;
    enum regerr result = storage_stat(storage_wrap_inner(s), path, out);
    return result == REG_ERR_NOT_FOUND ? REG_OK : result;
}

static enum regerr c_remove(struct storage *s, const char *path)
{
    return REG_ERR_UNSUPPORTED; /* never reaches the inner store */
}

static void c_dispose(struct storage_wrap *w)
{
    (*((struct counting *)w)->disposed)++;
}

static void test_override_is_called_instead(void **state)
{
    reset();
    int disposed = 0;
    struct storage inner = {&full_ops, false};
    static const struct storage_ops over = {.stat = c_stat, .remove = c_remove};
    struct storage_wrap *w = storage_wrap_new(&inner, sizeof(struct counting), &over, c_dispose);
    assert_non_null(w);
    struct counting *c = (struct counting *)w;
    c->disposed = &disposed;
    struct storage *st = &w->base;
    struct storage_stat sst;
    assert_int_equal(storage_stat(st, "/s", &sst), REG_OK);
    assert_int_equal(c->stats, 1);
    assert_int_equal(calls[OP_STAT], 1);
    assert_int_equal(storage_remove(st, "/r"), REG_ERR_UNSUPPORTED);
    assert_int_equal(calls[OP_REMOVE], 0);
    /* The ops not overridden still forward. */
    assert_int_equal(storage_put_content(st, "/p", "xy", 2), REG_OK);
    assert_int_equal(calls[OP_PUT], 1);
    storage_free(st);
    assert_int_equal(disposed, 1);
    assert_int_equal(calls[OP_FREE], 1);
}

static void test_is_local_and_optional_ops_are_the_inner(void **state)
{
    reset();
    struct storage_ops bare = full_ops;
    bare.presign_get = NULL;
    bare.read_range = NULL;
    static const struct storage_ops over = {.presign_get = i_presign_get};
    for (int local = 0; local < 2; local++) {
        struct storage inner = {&bare, local};
        struct storage_wrap *w = storage_wrap_new(&inner, sizeof(*w), &over, NULL);
        assert_non_null(w);
        assert_int_equal(storage_is_local(&w->base), local);
        /* Without them in the inner store the wrapper has none either, override or not. */
        assert_null(w->base.ops->presign_get);
        assert_null(w->base.ops->read_range);
        char *url = NULL;
        assert_int_equal(storage_presign_get(&w->base, "/u", 60, &url), REG_ERR_UNSUPPORTED);
        assert_int_equal(storage_read_range(&w->base, "/u", 0, 0, sink, NULL), REG_ERR_UNSUPPORTED);
        storage_free(&w->base);
    }
    assert_int_equal(calls[OP_PRESIGN], 0);
    assert_int_equal(calls[OP_FREE], 2);
    /* A wrapper of a wrapper answers as the innermost store. */
    struct storage inner = {&full_ops, true};
    struct storage_wrap *a = storage_wrap_new(&inner, sizeof(*a), NULL, NULL);
    struct storage_wrap *b = storage_wrap_new(&a->base, sizeof(*b), NULL, NULL);
    assert_true(storage_is_local(&b->base));
    assert_string_equal(b->base.ops->name, "inner");
    storage_free(&b->base);
    assert_int_equal(calls[OP_FREE], 3);
    assert_null(storage_wrap_new(NULL, sizeof(*a), NULL, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_op_forwards),
        cmocka_unit_test(test_override_is_called_instead),
        cmocka_unit_test(test_is_local_and_optional_ops_are_the_inner),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
