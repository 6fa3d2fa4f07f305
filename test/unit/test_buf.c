#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "buf.h"

static void test_append_and_take(void **state)
{
    struct buf b = BUF_INIT(1024);
    assert_string_equal(buf_cstr(&b), "");
    assert_int_equal(buf_append_str(&b, "abc"), BUF_OK);
    assert_int_equal(buf_putc(&b, '-'), BUF_OK);
    assert_int_equal(buf_printf(&b, "%d:%s", 42, "x"), BUF_OK);
    assert_int_equal(b.len, 8);
    assert_string_equal(buf_cstr(&b), "abc-42:x");
    char *s = buf_take(&b);
    assert_string_equal(s, "abc-42:x");
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 1024);
    free(s);
    s = buf_take(&b);
    assert_string_equal(s, "");
    free(s);
}

static void test_cap_is_exact_and_failure_keeps_contents(void **state)
{
    struct buf b = BUF_INIT(10);
    assert_int_equal(buf_append(&b, "0123456789", 10), BUF_OK);
    assert_int_equal(b.cap, 10);
    assert_int_equal(buf_putc(&b, 'x'), BUF_TOO_BIG);
    assert_int_equal(buf_printf(&b, "%s", "y"), BUF_TOO_BIG);
    assert_int_equal(b.len, 10);
    assert_string_equal(buf_cstr(&b), "0123456789");
    /* A length that would overflow len + n is refused, not wrapped. */
    assert_int_equal(buf_reserve(&b, (size_t)-1), BUF_TOO_BIG);
    buf_free(&b);
    assert_int_equal(b.max, 10);
}

static void test_reserve_commit_consume_clear(void **state)
{
    struct buf b = BUF_INIT(BUF_UNCAPPED);
    assert_int_equal(buf_reserve(&b, 5000), BUF_OK);
    assert_true(b.cap >= 5000);
    memset(b.p, 'a', 5000);
    buf_commit(&b, 5000);
    assert_int_equal(strlen(buf_cstr(&b)), 5000);
    buf_consume(&b, 4990);
    assert_int_equal(b.len, 10);
    assert_string_equal(buf_cstr(&b), "aaaaaaaaaa");
    buf_consume(&b, 11);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append(&b, "z", 1), BUF_OK);
    buf_clear(&b);
    assert_string_equal(buf_cstr(&b), "");
    assert_int_equal(buf_append(&b, NULL, 0), BUF_OK);
    buf_free(&b);
    /* Exact: no doubling, also when growing. */
    assert_int_equal(buf_reserve_exact(&b, 5000), BUF_OK);
    assert_int_equal(b.cap, 5000);
    buf_commit(&b, 4000);
    assert_int_equal(buf_reserve_exact(&b, 1500), BUF_OK);
    assert_int_equal(b.cap, 5500);
    assert_int_equal(buf_reserve_exact(&b, 10), BUF_OK);
    assert_int_equal(b.cap, 5500);
    buf_free(&b);
    b = BUF_INIT(100);
    assert_int_equal(buf_reserve_exact(&b, 101), BUF_TOO_BIG);
    buf_free(&b);
}

static void test_truncate(void **state)
{
    (void)state;
    struct buf b = BUF_INIT(64);
    buf_truncate(&b, 0); /* nothing allocated yet */
    assert_int_equal(buf_append_str(&b, "value \t "), BUF_OK);
    buf_truncate(&b, 5);
    assert_int_equal(b.len, 5);
    assert_string_equal(buf_cstr(&b), "value");
    buf_truncate(&b, 9); /* longer than len: unchanged */
    assert_string_equal(buf_cstr(&b), "value");
    assert_int_equal(buf_putc(&b, '\0'), BUF_OK);
    assert_int_equal(b.len, 6);
    buf_free(&b);
}

static void test_grow_items(void **state)
{
    int *v = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < 100; i++) {
        assert_int_equal(buf_grow_items(&v, &cap, i + 1, sizeof(*v), 100), BUF_OK);
        v[i] = (int)i;
    }
    assert_int_equal(cap, 100);
    assert_int_equal(buf_grow_items(&v, &cap, 101, sizeof(*v), 100), BUF_TOO_BIG);
    assert_int_equal(cap, 100);
    assert_int_equal(v[99], 99);
    free(v);
    v = NULL;
    cap = 0;
    assert_int_equal(buf_grow_items(&v, &cap, 1, (size_t)-1 / 2, 4), BUF_TOO_BIG);
    assert_null(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_take),
        cmocka_unit_test(test_cap_is_exact_and_failure_keeps_contents),
        cmocka_unit_test(test_reserve_commit_consume_clear),
        cmocka_unit_test(test_truncate),
        cmocka_unit_test(test_grow_items),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
