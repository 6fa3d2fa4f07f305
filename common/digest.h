#ifndef REGMIRROR_DIGEST_H
#define REGMIRROR_DIGEST_H
/*
 * digest: content digests as the OCI image-spec and distribution-spec write them
 * ("sha256:<hex>"), and streaming hashing with OpenSSL EVP.
 *
 * Grammar (OCI image-spec, descriptor.md "Digests"):
 *   digest              ::= algorithm ":" encoded
 *   algorithm           ::= algorithm-component (algorithm-separator algorithm-component)*
 *   algorithm-component ::= [a-z0-9]+
 *   algorithm-separator ::= [+._-]
 *   encoded             ::= [a-zA-Z0-9=_-]+
 * with the registered algorithms narrowing "encoded": sha256 is exactly 64, sha384 exactly 96
 * and sha512 exactly 128 lowercase hex characters (the three go-digest, and so registry:2,
 * accepts).
 */
#include <stdbool.h>
#include <stddef.h>

enum digest_algo { DIGEST_SHA256, DIGEST_SHA384, DIGEST_SHA512 };

/* Longest hex encoding (sha512) plus its NUL. */
#define DIGEST_HEX_MAX 129
/* Longest "algo:hex" string plus its NUL ("sha512:" + 128 + 1). */
#define DIGEST_STR_MAX 140

struct digest {
    enum digest_algo algo;
    char hex[DIGEST_HEX_MAX]; /* lowercase hex, NUL-terminated */
};

/*
 * Parses the len bytes at s (no NUL needed; a NUL inside is just an invalid byte).
 * Returns 0 and fills *out (if out is not NULL) for a valid sha256, sha384 or sha512 digest.
 * Returns -2 when s matches the generic grammar but names an algorithm regmirror does not
 * implement (e.g. "sha1:..." or "blake3:..."), so the API can say UNSUPPORTED rather than
 * DIGEST_INVALID. Returns -1 for everything else, including a known algorithm with the wrong
 * length or with uppercase hex. *out is left untouched on failure.
 */
int digest_parse(const char *s, size_t len, struct digest *out);

/* Writes "algo:hex" into buf, which must hold DIGEST_STR_MAX bytes; returns buf. */
const char *digest_str(const struct digest *d, char *buf);

/* "sha256", "sha384" or "sha512"; "unknown" for an out-of-range value. */
const char *digest_algo_name(enum digest_algo algo);

/* Length of the algorithm's hex encoding (64, 96, 128); 0 for an out-of-range value. */
size_t digest_hex_len(enum digest_algo algo);

/* Same algorithm and same hex. */
bool digest_equal(const struct digest *a, const struct digest *b);

/*
 * Streaming hash. digest_hasher_new returns NULL when out of memory or when OpenSSL cannot
 * provide the algorithm. update and final return 0 or -1. After final (successful or not)
 * the hasher accepts no more updates; it is released with digest_hasher_free, which takes
 * NULL too.
 */
struct digest_hasher;
struct digest_hasher *digest_hasher_new(enum digest_algo algo);
int digest_hasher_update(struct digest_hasher *h, const void *data, size_t len);
int digest_hasher_final(struct digest_hasher *h, struct digest *out);
void digest_hasher_free(struct digest_hasher *h);

/* One-shot hash of len bytes at data; 0 or -1. */
int digest_compute(enum digest_algo algo, const void *data, size_t len, struct digest *out);

#endif
