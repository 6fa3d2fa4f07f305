#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "digest.h"

#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ABC_SHA256 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define EMPTY_SHA384                                                                               \
    "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898" \
    "b95b"
#define ABC_SHA384                                                                                 \
    "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c8" \
    "25a7"
#define EMPTY_SHA512                                                                               \
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877e" \
    "ec"                                                                                           \
    "2f63b931bd47417a81a538327af927da3e"
#define ABC_SHA512                                                                                 \
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3fe" \
    "eb"                                                                                           \
    "bd454d4423643ce80e2a9ac94fa54ca49f"

static int parse(const char *s, struct digest *d)
{
    return digest_parse(s, strlen(s), d);
}

static void test_parse_valid(void **state)
{
    struct digest d;
    char buf[DIGEST_STR_MAX];

    assert_int_equal(parse("sha256:" EMPTY_SHA256, &d), 0);
    assert_int_equal(d.algo, DIGEST_SHA256);
    assert_string_equal(d.hex, EMPTY_SHA256);
    assert_string_equal(digest_str(&d, buf), "sha256:" EMPTY_SHA256);

    assert_int_equal(parse("sha512:" EMPTY_SHA512, &d), 0);
    assert_int_equal(d.algo, DIGEST_SHA512);
    assert_string_equal(d.hex, EMPTY_SHA512);
    assert_string_equal(digest_str(&d, buf), "sha512:" EMPTY_SHA512);
    assert_int_equal(strlen(buf) + 1, 136);

    assert_int_equal(parse("sha384:" EMPTY_SHA384, &d), 0);
    assert_int_equal(d.algo, DIGEST_SHA384);
    assert_string_equal(d.hex, EMPTY_SHA384);
    assert_string_equal(digest_str(&d, buf), "sha384:" EMPTY_SHA384);
    /* sha384 has its own length: 64 or 128 hex characters are not a sha384 digest. */
    assert_int_equal(parse("sha384:" EMPTY_SHA256, NULL), -1);
    assert_int_equal(parse("sha384:" EMPTY_SHA512, NULL), -1);
    assert_int_equal(parse("sha512:" EMPTY_SHA384, NULL), -1);

    /* Validation only. */
    assert_int_equal(parse("sha256:" ABC_SHA256, NULL), 0);
}

static void test_parse_invalid(void **state)
{
    struct digest d;
    static const char *const bad[] = {
        "",
        "sha256",
        "sha256:",
        ":" EMPTY_SHA256,
        "sha256" EMPTY_SHA256,
        /* uppercase hex */
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85A",
        /* wrong lengths */
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        "sha256:" EMPTY_SHA256 "0",
        "sha512:" EMPTY_SHA256,
        /* non-hex in the right length */
        "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        /* trailing and leading garbage */
        "sha256:" EMPTY_SHA256 " ",
        "sha256:" EMPTY_SHA256 "\n",
        " sha256:" EMPTY_SHA256,
        "sha256:" EMPTY_SHA256 ":",
        "sha256::" EMPTY_SHA256,
        /* uppercase algorithm */
        "SHA256:" EMPTY_SHA256,
        /* separators in the wrong places */
        "-sha256:" EMPTY_SHA256,
        "sha256-:abc",
        "sha..256:abc",
        "sha+:abc",
        /* characters outside "encoded" */
        "foo:ab/c",
        "foo:ab+c",
        "foo:ab.c",
        "foo:",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&d, 0x5a, sizeof(d));
        if (parse(bad[i], &d) != -1)
            fail_msg("accepted or misclassified \"%s\"", bad[i]);
        assert_int_equal(d.hex[0], 0x5a); /* untouched on failure */
    }
    assert_int_equal(digest_parse(NULL, 0, &d), -1);
}

static void test_parse_embedded_nul(void **state)
{
    char s[] = "sha256:" EMPTY_SHA256;

    s[20] = '\0';
    assert_int_equal(digest_parse(s, sizeof(s) - 1, NULL), -1);
    /* The length bounds the scan: a prefix is not a digest. */
    assert_int_equal(digest_parse("sha256:" EMPTY_SHA256, 30, NULL), -1);
}

static void test_parse_unsupported(void **state)
{
    assert_int_equal(parse("sha384:abc", NULL), -1);
    assert_int_equal(parse("sha224:abc", NULL), -2);
    assert_int_equal(parse("blake3:" EMPTY_SHA256, NULL), -2);
    assert_int_equal(parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", NULL),
                     -2);
    assert_int_equal(parse("sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", NULL), -2);
    assert_int_equal(parse("a.b_c-d+e:A=_-z9", NULL), -2);
    assert_int_equal(parse("sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709", NULL), -2);
}

static void test_equal_and_names(void **state)
{
    struct digest a, b;

    assert_int_equal(parse("sha256:" EMPTY_SHA256, &a), 0);
    assert_int_equal(parse("sha256:" EMPTY_SHA256, &b), 0);
    assert_true(digest_equal(&a, &b));
    assert_int_equal(parse("sha256:" ABC_SHA256, &b), 0);
    assert_false(digest_equal(&a, &b));
    assert_int_equal(parse("sha512:" EMPTY_SHA512, &b), 0);
    assert_false(digest_equal(&a, &b));

    assert_string_equal(digest_algo_name(DIGEST_SHA256), "sha256");
    assert_string_equal(digest_algo_name(DIGEST_SHA384), "sha384");
    assert_string_equal(digest_algo_name(DIGEST_SHA512), "sha512");
    assert_int_equal(digest_hex_len(DIGEST_SHA256), 64);
    assert_int_equal(digest_hex_len(DIGEST_SHA384), 96);
    assert_int_equal(digest_hex_len(DIGEST_SHA512), 128);
    assert_int_equal(digest_hex_len((enum digest_algo)42), 0);
    assert_string_equal(digest_algo_name((enum digest_algo)42), "unknown");
}

static void test_compute_vectors(void **state)
{
    struct digest d;

    assert_int_equal(digest_compute(DIGEST_SHA256, "", 0, &d), 0);
    assert_string_equal(d.hex, EMPTY_SHA256);
    assert_int_equal(digest_compute(DIGEST_SHA256, NULL, 0, &d), 0);
    assert_string_equal(d.hex, EMPTY_SHA256);
    assert_int_equal(digest_compute(DIGEST_SHA256, "abc", 3, &d), 0);
    assert_string_equal(d.hex, ABC_SHA256);
    assert_int_equal(digest_compute(DIGEST_SHA512, "", 0, &d), 0);
    assert_int_equal(d.algo, DIGEST_SHA512);
    assert_string_equal(d.hex, EMPTY_SHA512);
    assert_int_equal(digest_compute(DIGEST_SHA512, "abc", 3, &d), 0);
    assert_string_equal(d.hex, ABC_SHA512);
    assert_int_equal(digest_compute(DIGEST_SHA384, "", 0, &d), 0);
    assert_int_equal(d.algo, DIGEST_SHA384);
    assert_string_equal(d.hex, EMPTY_SHA384);
    assert_int_equal(digest_compute(DIGEST_SHA384, "abc", 3, &d), 0);
    assert_string_equal(d.hex, ABC_SHA384);
}

static void test_streaming(void **state)
{
    struct digest whole, parts;
    struct digest_hasher *h;
    char data[10000];
    size_t i;

    for (i = 0; i < sizeof(data); i++)
        data[i] = (char)(i * 7 + 3);
    assert_int_equal(digest_compute(DIGEST_SHA256, data, sizeof(data), &whole), 0);

    h = digest_hasher_new(DIGEST_SHA256);
    assert_non_null(h);
    for (i = 0; i < sizeof(data); i += 333) {
        size_t n = sizeof(data) - i < 333 ? sizeof(data) - i : 333;
        assert_int_equal(digest_hasher_update(h, data + i, n), 0);
    }
    assert_int_equal(digest_hasher_update(h, data, 0), 0);
    assert_int_equal(digest_hasher_final(h, &parts), 0);
    assert_true(digest_equal(&whole, &parts));
    /* Finished hashers take nothing more. */
    assert_int_equal(digest_hasher_update(h, "x", 1), -1);
    assert_int_equal(digest_hasher_final(h, &parts), -1);
    digest_hasher_free(h);
    digest_hasher_free(NULL);

    assert_null(digest_hasher_new((enum digest_algo)42));
}

static void test_str_roundtrip(void **state)
{
    struct digest d, back;
    char buf[DIGEST_STR_MAX];

    assert_int_equal(digest_compute(DIGEST_SHA512, "regmirror", 9, &d), 0);
    digest_str(&d, buf);
    assert_int_equal(digest_parse(buf, strlen(buf), &back), 0);
    assert_true(digest_equal(&d, &back));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_parse_embedded_nul), cmocka_unit_test(test_parse_unsupported),
        cmocka_unit_test(test_equal_and_names),    cmocka_unit_test(test_compute_vectors),
        cmocka_unit_test(test_streaming),          cmocka_unit_test(test_str_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
