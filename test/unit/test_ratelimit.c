/*
 * test_ratelimit: the ratelimit-* header parser at its edges, the per-upstream record (what a
 * budget, a 429 and time do to the hold, and the once-per-window log), and the
 * proxy.ratelimitreserve key (count, percent, environment, errors, printing).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config.h"
#include "metrics.h"
#include "ratelimit.h"

/* ---- the parser ---- */

static int parse(const char *v, struct ratelimit_value *out)
{
    return ratelimit_parse(v, strlen(v), out);
}

static void expect(const char *v, long count, long window)
{
    struct ratelimit_value out;
    if (parse(v, &out) != 0)
        fail_msg("not read: \"%s\"", v);
    assert_int_equal(out.count, count);
    assert_int_equal(out.window_s, window);
}

static void refuse(const char *v)
{
    struct ratelimit_value out = {7, 7};
    if (parse(v, &out) == 0)
        fail_msg("read: \"%s\" as %ld;w=%ld", v, out.count, out.window_s);
    assert_int_equal(out.count, 0);
    assert_int_equal(out.window_s, 0);
}

static void test_parse_hub_values(void **state)
{
    expect("100;w=21600", 100, 21600);
    expect("0;w=21600", 0, 21600);
    expect("76;w=21600", 76, 21600);
    expect("5000;W=3600", 5000, 3600);
}

static void test_parse_missing_window(void **state)
{
    /* The count alone is enough for the reserve; the record then uses a default window. */
    expect("100", 100, 0);
    refuse("100;");
    refuse("100;w");
    refuse("100;w=");
    refuse("100;=21600");
    refuse(";w=21600");
}

static void test_parse_junk(void **state)
{
    refuse("");
    refuse("abc");
    refuse("-1;w=60");
    refuse("+1;w=60");
    refuse("1.5;w=60");
    refuse("0x10;w=60");
    refuse("100;w=-5");
    refuse("100;w=0");
    refuse("100;w=10s");
    refuse("100;w=60;w=60");
    refuse("100 200");
    refuse("100;w=\"60\"");
    refuse("100\r\nX-Injected: 1");
    refuse("100;w=60\n");
    refuse(",100");
    refuse("100,");
    refuse("100,,5");
    refuse("100;w=60, junk");
    /* a NUL inside the value ends nothing early */
    struct ratelimit_value out;
    assert_int_equal(ratelimit_parse("100\0;w=60", 9, &out), -1);
}

static void test_parse_huge_numbers(void **state)
{
    expect("1000000000;w=2678400", RATELIMIT_COUNT_MAX, RATELIMIT_WINDOW_MAX);
    refuse("1000000001;w=60");
    refuse("99999999999999999999999999;w=60");
    refuse("100;w=2678401");
    refuse("100;w=99999999999999999999");
    expect("0000000000000100;w=60", 100, 60); /* leading zeros are still a number */
    char longv[RATELIMIT_VALUE_MAX + 2];
    memset(longv, ' ', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    longv[0] = '1';
    refuse(longv); /* over the length cap, however harmless */
}

static void test_parse_spaces(void **state)
{
    expect("  100;w=60  ", 100, 60);
    expect("100 ; w=60", 100, 60);
    expect("\t100;\tw=60\t", 100, 60);
    refuse("100;w =60");
    refuse("100;w= 60");
    refuse("1 00;w=60");
}

static void test_parse_several_values(void **state)
{
    /* The first item is the one in effect; the others must still be well-formed. */
    expect("100;w=21600, 1000;w=86400", 100, 21600);
    expect("10, 10;w=1, 50;w=60", 10, 0);
    expect("100;w=60;comment=hub", 100, 60);
    refuse("100;w=60, 1000;w=abc");
    refuse("100;w=60;comment=\"quoted\"");
}

/* ---- the record ---- */

static void test_note_and_hold(void **state)
{
    struct ratelimit rl = {0};
    int64_t t = 1000000;
    assert_int_equal(ratelimit_hold(&rl, 10, false, t), RATELIMIT_OPEN);
    assert_false(ratelimit_note(&rl, NULL, "5;w=60", NULL, t));
    assert_false(ratelimit_note(&rl, "100;w=60", "x", NULL, t));
    assert_false(rl.known);
    assert_true(ratelimit_note(&rl, "100;w=60", "11;w=60", "192.0.2.1", t));
    assert_true(rl.known);
    assert_int_equal(rl.limit, 100);
    assert_int_equal(rl.remaining, 11);
    assert_int_equal(rl.window_s, 60);
    assert_string_equal(rl.source, "192.0.2.1");
    assert_true(rl.seen > 0);
    assert_int_equal(ratelimit_hold(&rl, 10, false, t), RATELIMIT_OPEN);
    assert_int_equal(ratelimit_hold(&rl, 11, false, t), RATELIMIT_RESERVE); /* at: holds */
    assert_int_equal(ratelimit_hold(&rl, 10, true, t), RATELIMIT_OPEN);     /* 10 of 100 */
    assert_int_equal(ratelimit_hold(&rl, 11, true, t), RATELIMIT_RESERVE);
    assert_int_equal(ratelimit_hold(&rl, 0, false, t), RATELIMIT_OPEN);
    /* the window passed: the upstream has refilled, ask again */
    assert_int_equal(ratelimit_hold(&rl, 11, false, t + 59999), RATELIMIT_RESERVE);
    assert_int_equal(ratelimit_hold(&rl, 11, false, t + 60000), RATELIMIT_OPEN);
    /* an unreadable answer leaves the record as it was */
    assert_false(ratelimit_note(&rl, "100;w=60", "-3", NULL, t + 1));
    assert_int_equal(rl.remaining, 11);
    /* used up: a reserve of 0 holds too */
    assert_true(ratelimit_note(&rl, "100;w=60", "0;w=60", NULL, t));
    assert_int_equal(ratelimit_hold(&rl, 0, false, t), RATELIMIT_RESERVE);
    assert_string_equal(rl.source, "");
}

static void test_window_fallbacks_and_source(void **state)
{
    struct ratelimit rl = {0};
    int64_t t = 5000;
    /* no window on the limit: the remaining's; neither: the default */
    assert_true(ratelimit_note(&rl, "100", "1;w=30", "a-b_c:d.e", t));
    assert_int_equal(rl.window_s, 30);
    assert_string_equal(rl.source, "a-b_c:d.e");
    assert_true(ratelimit_note(&rl, "100", "1", "has space", t));
    assert_int_equal(rl.window_s, 0);
    assert_string_equal(rl.source, "");
    assert_int_equal(ratelimit_hold(&rl, 1, false, t + RATELIMIT_DEFAULT_WINDOW_S * 1000 - 1),
                     RATELIMIT_RESERVE);
    assert_int_equal(ratelimit_hold(&rl, 1, false, t + RATELIMIT_DEFAULT_WINDOW_S * 1000),
                     RATELIMIT_OPEN);
    char longsrc[RATELIMIT_SOURCE_MAX + 1];
    memset(longsrc, 'a', sizeof(longsrc) - 1);
    longsrc[sizeof(longsrc) - 1] = '\0';
    assert_true(ratelimit_note(&rl, "100", "1", longsrc, t));
    assert_string_equal(rl.source, "");
}

static void test_429_blocks_until_reset(void **state)
{
    struct ratelimit rl = {0};
    int64_t t = 10000;
    /* Retry-After wins */
    ratelimit_note_429(&rl, 2, t);
    assert_int_equal(ratelimit_hold(&rl, 0, false, t + 1999), RATELIMIT_BLOCKED);
    assert_int_equal(ratelimit_hold(&rl, 0, false, t + 2000), RATELIMIT_OPEN);
    /* else the window of the budget */
    assert_true(ratelimit_note(&rl, "100;w=5", "3;w=5", NULL, t));
    ratelimit_note_429(&rl, -1, t);
    assert_int_equal(ratelimit_hold(&rl, 0, false, t + 4999), RATELIMIT_BLOCKED);
    assert_int_equal(ratelimit_hold(&rl, 0, false, t + 5000), RATELIMIT_OPEN);
    /* else the default */
    struct ratelimit fresh = {0};
    ratelimit_note_429(&fresh, -1, t);
    assert_int_equal(ratelimit_hold(&fresh, 0, false, t + RATELIMIT_DEFAULT_WINDOW_S * 1000 - 1),
                     RATELIMIT_BLOCKED);
    assert_int_equal(ratelimit_hold(&fresh, 0, false, t + RATELIMIT_DEFAULT_WINDOW_S * 1000),
                     RATELIMIT_OPEN);
    assert_string_equal(ratelimit_hold_name(RATELIMIT_BLOCKED), "blocked");
}

static void test_log_once_per_window(void **state)
{
    struct ratelimit rl = {0};
    int64_t t = 100000;
    assert_false(ratelimit_log_due(&rl, RATELIMIT_OPEN, t));
    assert_true(ratelimit_note(&rl, "100;w=10", "0;w=10", NULL, t));
    assert_true(ratelimit_log_due(&rl, RATELIMIT_RESERVE, t));
    assert_false(ratelimit_log_due(&rl, RATELIMIT_RESERVE, t + 1));
    assert_false(ratelimit_log_due(&rl, RATELIMIT_RESERVE, t + 9999));
    assert_true(ratelimit_log_due(&rl, RATELIMIT_RESERVE, t + 10000));
    /* a 429 is news even within the window */
    ratelimit_note_429(&rl, 3, t + 10001);
    assert_true(ratelimit_log_due(&rl, RATELIMIT_BLOCKED, t + 10001));
    assert_false(ratelimit_log_due(&rl, RATELIMIT_BLOCKED, t + 12000));
    assert_true(ratelimit_log_due(&rl, RATELIMIT_BLOCKED, t + 13001));
}

/* ---- the gauges ---- */

static char *render(void)
{
    struct evbuffer *out = evbuffer_new();
    metrics_render(out);
    size_t n = evbuffer_get_length(out);
    char *text = malloc(n + 1);
    evbuffer_remove(out, text, n);
    text[n] = '\0';
    evbuffer_free(out);
    return text;
}

static void test_gauges_by_upstream(void **state)
{
    struct ratelimit hub = {0}, other = {0};
    struct metrics_upstream mh = {.name = "docker.io", .rl = &hub};
    struct metrics_upstream mo = {.name = "odd\"name", .rl = &other};
    metrics_upstream_add(&mh);
    metrics_upstream_add(&mo);
    char *text = render();
    /* declared, but no sample before a budget is known */
    assert_non_null(strstr(text, "# TYPE regmirror_upstream_ratelimit_limit gauge\n"));
    assert_non_null(strstr(text, "# TYPE regmirror_upstream_ratelimit_remaining gauge\n"));
    assert_null(strstr(text, "regmirror_upstream_ratelimit_limit{"));
    free(text);
    assert_true(ratelimit_note(&hub, "100;w=21600", "76;w=21600", NULL, 1));
    assert_true(ratelimit_note(&other, "5000", "4999", NULL, 1));
    text = render();
    assert_non_null(
        strstr(text, "regmirror_upstream_ratelimit_limit{upstream=\"docker.io\"} 100\n"));
    assert_non_null(
        strstr(text, "regmirror_upstream_ratelimit_remaining{upstream=\"docker.io\"} 76\n"));
    assert_non_null(
        strstr(text, "regmirror_upstream_ratelimit_remaining{upstream=\"odd\\\"name\"} 4999\n"));
    free(text);
    metrics_upstream_remove(&mo);
    metrics_upstream_remove(&mh);
    text = render();
    assert_null(strstr(text, "regmirror_upstream_ratelimit_limit{"));
    free(text);
}

/* ---- proxy.ratelimitreserve ---- */

static const char base_yaml[] = "version: 0.1\n"
                                "storage:\n  inmemory: {}\n"
                                "proxy:\n  remoteurl: https://registry-1.docker.io\n";

static int load_with(const char *line, char *const *env, struct config *cfg, struct config_diag *d)
{
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "%s%s", base_yaml, line);
    return config_load_string(yaml, strlen(yaml), "test.yml", env, cfg, d);
}

static void test_config_reserve(void **state)
{
    static const struct {
        const char *line;
        int64_t value;
        bool percent;
    } ok[] = {
        {"", 0, false},
        {"  ratelimitreserve: 20\n", 20, false},
        {"  ratelimitreserve: 10%\n", 10, true},
        {"  ratelimitreserve: \"100%\"\n", 100, true},
        {"  ratelimitreserve: 0%\n", 0, true},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct config cfg;
        struct config_diag d;
        assert_int_equal(load_with(ok[i].line, NULL, &cfg, &d), 0);
        assert_int_equal(cfg.proxy.ratelimitreserve.value, ok[i].value);
        assert_int_equal(cfg.proxy.ratelimitreserve.percent, ok[i].percent);
        config_free(&cfg);
        config_diag_free(&d);
    }
}

static void test_config_reserve_env_and_print(void **state)
{
    char *env[] = {"REGISTRY_PROXY_RATELIMITRESERVE=25%", NULL};
    struct config cfg;
    struct config_diag d;
    assert_int_equal(load_with("  ratelimitreserve: 3\n", env, &cfg, &d), 0);
    assert_int_equal(cfg.proxy.ratelimitreserve.value, 25);
    assert_true(cfg.proxy.ratelimitreserve.percent);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_print(&cfg, f);
    fclose(f);
    assert_non_null(strstr(text, "  ratelimitreserve: 25%\n"));
    /* what is printed loads back to the same value */
    struct config back;
    struct config_diag d2;
    assert_int_equal(config_load_string(text, len, "printed.yml", NULL, &back, &d2), 0);
    assert_int_equal(back.proxy.ratelimitreserve.value, 25);
    assert_true(back.proxy.ratelimitreserve.percent);
    free(text);
    config_free(&back);
    config_diag_free(&d2);
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_config_reserve_errors(void **state)
{
    static const char *const bad[] = {
        "  ratelimitreserve: -1\n",         "  ratelimitreserve: 101%\n",
        "  ratelimitreserve: ten\n",        "  ratelimitreserve: 10 %\n",
        "  ratelimitreserve: \"%\"\n",      "  ratelimitreserve: 1.5\n",
        "  ratelimitreserve: 1000000001\n", "  ratelimitreserve: [1]\n",
        "  ratelimitreserve: 0x10\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct config cfg;
        struct config_diag d;
        assert_int_equal(load_with(bad[i], NULL, &cfg, &d), -1);
        bool named = false;
        for (size_t k = 0; k < d.nerrors; k++)
            named = named || strstr(d.errors[k], "proxy.ratelimitreserve: expected") != NULL;
        if (!named)
            fail_msg("no error naming the key for %s", bad[i]);
        config_diag_free(&d);
    }
    char *env[] = {"REGISTRY_PROXY_RATELIMITRESERVE=lots", NULL};
    struct config cfg;
    struct config_diag d;
    assert_int_equal(load_with("", env, &cfg, &d), -1);
    assert_non_null(strstr(d.errors[0], "proxy.ratelimitreserve"));
    assert_non_null(strstr(d.errors[0], "REGISTRY_PROXY_RATELIMITRESERVE"));
    config_diag_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_hub_values),
        cmocka_unit_test(test_parse_missing_window),
        cmocka_unit_test(test_parse_junk),
        cmocka_unit_test(test_parse_huge_numbers),
        cmocka_unit_test(test_parse_spaces),
        cmocka_unit_test(test_parse_several_values),
        cmocka_unit_test(test_note_and_hold),
        cmocka_unit_test(test_window_fallbacks_and_source),
        cmocka_unit_test(test_429_blocks_until_reset),
        cmocka_unit_test(test_log_once_per_window),
        cmocka_unit_test(test_gauges_by_upstream),
        cmocka_unit_test(test_config_reserve),
        cmocka_unit_test(test_config_reserve_env_and_print),
        cmocka_unit_test(test_config_reserve_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
