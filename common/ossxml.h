#ifndef REGMIRROR_OSSXML_H
#define REGMIRROR_OSSXML_H
/*
 * ossxml: a small, strict reader for the XML documents OSS answers with (Error,
 * ListBucketResult, InitiateMultipartUploadResult, CompleteMultipartUploadResult,
 * CopyObjectResult, CopyPartResult, DeleteResult).
 *
 * Accepted: an optional <?xml ...?> declaration, comments between elements, elements with
 * (skipped) attributes, elements holding either text or child elements (white space between
 * children), the five predefined entities and numeric character references. Refused: DOCTYPE,
 * CDATA, processing instructions inside the document, mixed content, mismatched or unclosed
 * tags, bad entities, documents over OSSXML_MAX_INPUT bytes, nesting over OSSXML_MAX_DEPTH,
 * paths over OSSXML_MAX_PATH bytes, names over OSSXML_MAX_NAME bytes.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "regerr.h"

#define OSSXML_MAX_INPUT (16 * 1024 * 1024)
#define OSSXML_MAX_DEPTH 16
#define OSSXML_MAX_NAME 64
#define OSSXML_MAX_PATH 512
/* Entries (keys plus common prefixes) accepted in one listing page. */
#define OSSXML_MAX_LIST 10000

enum ossxml_event { OSSXML_OPEN, OSSXML_TEXT, OSSXML_CLOSE };

/*
 * Called for every element opened and closed, and once with the raw (still entity-encoded)
 * text of each element that has no children. path is "Root/Child/Leaf". A non-zero return
 * stops the walk and is returned by ossxml_walk.
 */
typedef int (*ossxml_cb)(void *ctx, enum ossxml_event ev, const char *path, const char *text,
                         size_t len);

/* Walks the document: 0, -1 when it is malformed, or the callback's non-zero value. */
int ossxml_walk(const char *buf, size_t len, ossxml_cb cb, void *ctx);

/*
 * Decodes the entities of raw text into out (at most cap-1 bytes and a NUL, like snprintf).
 * Returns the full decoded length, or -1 for a malformed entity or a NUL character.
 */
ssize_t ossxml_decode(const char *raw, size_t len, char *out, size_t cap);

/*
 * Decodes %XX escapes (and '+' as a space, as OSS's encoding-type=url listings are read by
 * its SDKs) in place. Returns 0, or -1 for a malformed escape or a NUL byte.
 */
int ossxml_url_decode(char *s);

/* Copies the decoded text of the first element at path. 0; 1 when absent; -1 malformed/long. */
int ossxml_find(const char *buf, size_t len, const char *path, char *out, size_t cap);

/* An <Error> document (the fields are cut to their buffers). */
struct ossxml_error {
    char code[64];
    char message[256];
    char request_id[64];
    char ec[64];
};
/* 0 when buf is an <Error> document (fields absent are ""), -1 otherwise. */
int ossxml_parse_error(const char *buf, size_t len, struct ossxml_error *out);

/*
 * The error the driver reports for an OSS answer: 404 codes (NoSuchKey, NoSuchUpload) are
 * REG_ERR_NOT_FOUND, 5xx and throttling REG_ERR_UNAVAILABLE, EntityTooLarge REG_ERR_TOO_LARGE,
 * InvalidRange REG_ERR_RANGE_INVALID, everything else (auth, NoSuchBucket, bad requests)
 * REG_ERR_INTERNAL. code may be NULL or "" (a HEAD answer without x-oss-err).
 */
enum regerr ossxml_regerr(long status, const char *code);

/* A ListObjects / ListObjectsV2 page; keys and prefixes decoded (also encoding-type=url). */
struct ossxml_list {
    char **keys;
    uint64_t *sizes;
    size_t nkeys;
    char **prefixes;
    size_t nprefixes;
    bool truncated;
    char *next; /* NextContinuationToken (V2) or NextMarker (V1); NULL when absent */
};
/* 0, or -1 when malformed, not a ListBucketResult, over OSSXML_MAX_LIST, or out of memory. */
int ossxml_parse_list(const char *buf, size_t len, struct ossxml_list *out);
void ossxml_list_free(struct ossxml_list *l);

#endif
