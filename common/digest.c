#include "digest.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

static const struct {
    const char *name;
    size_t name_len;
    size_t hex_len;
} algos[] = {
    [DIGEST_SHA256] = {"sha256", 6, 64},
    [DIGEST_SHA384] = {"sha384", 6, 96},
    [DIGEST_SHA512] = {"sha512", 6, 128},
};

#define NALGOS (sizeof(algos) / sizeof(algos[0]))

struct digest_hasher {
    EVP_MD_CTX *ctx;
    enum digest_algo algo;
    bool finished;
};

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_lower_hex(char c)
{
    return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9');
}

static bool is_separator(char c)
{
    return c == '+' || c == '.' || c == '_' || c == '-';
}

static bool is_encoded_char(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '=' || c == '_' || c == '-';
}

/*
 * Length of the algorithm part at the start of s[0..len) if it matches the "algorithm"
 * production and is followed by ':'; 0 otherwise. A separator must sit between two
 * components, so it can neither start nor end the algorithm nor follow another separator.
 */
static size_t scan_algorithm(const char *s, size_t len)
{
    size_t i = 0;
    bool need_component = true;

    for (; i < len && s[i] != ':'; i++) {
        if (is_lower_alnum(s[i])) {
            need_component = false;
        } else if (!need_component && is_separator(s[i])) {
            need_component = true;
        } else {
            return 0;
        }
    }
    if (i == len || need_component)
        return 0;
    return i;
}

int digest_parse(const char *s, size_t len, struct digest *out)
{
    size_t alen, elen, i;
    const char *enc;

    if (s == NULL)
        return -1;
    alen = scan_algorithm(s, len);
    if (alen == 0)
        return -1;
    enc = s + alen + 1;
    elen = len - alen - 1;
    if (elen == 0)
        return -1;
    for (i = 0; i < elen; i++) {
        if (!is_encoded_char(enc[i]))
            return -1;
    }

    for (i = 0; i < NALGOS; i++) {
        size_t k;

        if (alen != algos[i].name_len || memcmp(s, algos[i].name, alen) != 0)
            continue;
        if (elen != algos[i].hex_len)
            return -1;
        for (k = 0; k < elen; k++) {
            if (!is_lower_hex(enc[k]))
                return -1;
        }
        if (out != NULL) {
            out->algo = (enum digest_algo)i;
            memcpy(out->hex, enc, elen);
            out->hex[elen] = '\0';
        }
        return 0;
    }
    return -2;
}

const char *digest_algo_name(enum digest_algo algo)
{
    if ((size_t)algo >= NALGOS)
        return "unknown";
    return algos[algo].name;
}

size_t digest_hex_len(enum digest_algo algo)
{
    if ((size_t)algo >= NALGOS)
        return 0;
    return algos[algo].hex_len;
}

const char *digest_str(const struct digest *d, char *buf)
{
    const char *name = digest_algo_name(d->algo);
    size_t nlen = strlen(name);
    size_t hlen = strnlen(d->hex, DIGEST_HEX_MAX - 1);

    memcpy(buf, name, nlen);
    buf[nlen] = ':';
    memcpy(buf + nlen + 1, d->hex, hlen);
    buf[nlen + 1 + hlen] = '\0';
    return buf;
}

bool digest_equal(const struct digest *a, const struct digest *b)
{
    return a->algo == b->algo && strncmp(a->hex, b->hex, DIGEST_HEX_MAX) == 0;
}

static const EVP_MD *evp_md(enum digest_algo algo)
{
    switch (algo) {
    case DIGEST_SHA256:
        return EVP_sha256();
    case DIGEST_SHA384:
        return EVP_sha384();
    case DIGEST_SHA512:
        return EVP_sha512();
    }
    return NULL;
}

struct digest_hasher *digest_hasher_new(enum digest_algo algo)
{
    const EVP_MD *md = evp_md(algo);
    struct digest_hasher *h;

    if (md == NULL)
        return NULL;
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->algo = algo;
    h->ctx = EVP_MD_CTX_new();
    if (h->ctx == NULL || EVP_DigestInit_ex(h->ctx, md, NULL) != 1) {
        digest_hasher_free(h);
        return NULL;
    }
    return h;
}

int digest_hasher_update(struct digest_hasher *h, const void *data, size_t len)
{
    if (h->finished)
        return -1;
    if (len == 0)
        return 0;
    return EVP_DigestUpdate(h->ctx, data, len) == 1 ? 0 : -1;
}

int digest_hasher_final(struct digest_hasher *h, struct digest *out)
{
    static const char hexdig[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    unsigned int i;

    if (h->finished)
        return -1;
    h->finished = true;
    if (EVP_DigestFinal_ex(h->ctx, md, &mdlen) != 1)
        return -1;
    if ((size_t)mdlen * 2 != algos[h->algo].hex_len)
        return -1;
    out->algo = h->algo;
    for (i = 0; i < mdlen; i++) {
        out->hex[2 * i] = hexdig[md[i] >> 4];
        out->hex[2 * i + 1] = hexdig[md[i] & 0x0f];
    }
    out->hex[2 * mdlen] = '\0';
    return 0;
}

void digest_hasher_free(struct digest_hasher *h)
{
    if (h == NULL)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

int digest_compute(enum digest_algo algo, const void *data, size_t len, struct digest *out)
{
    struct digest_hasher *h = digest_hasher_new(algo);
    int result = -1;

    if (h == NULL)
        goto out;
    if (digest_hasher_update(h, data, len) != 0)
        goto out;
    result = digest_hasher_final(h, out);
out:
    digest_hasher_free(h);
    return result;
}
