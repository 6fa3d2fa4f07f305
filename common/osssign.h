#ifndef REGMIRROR_OSSSIGN_H
#define REGMIRROR_OSSSIGN_H
/*
 * osssign: Aliyun OSS request signatures, pure functions of a request's parts (no I/O, no
 * clock: the caller passes the dates).
 *
 *  - V4 (`OSS4-HMAC-SHA256`), the default: Authorization header and presigned URLs.
 *  - V1 (`OSS AK:base64(HMAC-SHA1)`), for existing buckets: Authorization header and signed
 *    URLs (OSSAccessKeyId/Expires/Signature).
 *
 * A request is described by struct osssign_req: the bucket and key as OSS sees them (the
 * canonical resource is always /bucket/key, also for a bucket's custom domain), the query
 * parameters URL-decoded, and the headers that will be sent (names in any case).
 *
 * Every function returning char * returns a malloc'd NUL-terminated string the caller frees,
 * or NULL when out of memory. The secret is only ever an HMAC key here: it is never copied
 * into a returned string.
 */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct osssign_kv {
    const char *name;
    const char *value; /* NULL is the empty value */
};

struct osssign_req {
    const char *method; /* "GET", "PUT", ... */
    const char *bucket; /* NULL or "": none */
    const char *key;    /* object key without a leading '/'; NULL or "" for the bucket */
    const struct osssign_kv *query; /* decoded names and values, in request order */
    size_t nquery;
    const struct osssign_kv *headers; /* the headers sent; names in any case */
    size_t nheaders;
};

/* base64(HMAC-SHA1) is 28 characters; hex(HMAC-SHA256) is 64. */
#define OSSSIGN_V1_SIG_LEN 28
#define OSSSIGN_V4_SIG_LEN 64

/*
 * URI-encodes s as OSS (and RFC 3986) want it: unreserved characters A-Z a-z 0-9 - _ . ~
 * stay, '/' stays when keep_slash, every other byte is %XX (upper-case hex).
 */
char *osssign_uri_encode(const char *s, int keep_slash);

/* "Wed, 28 Dec 2022 10:27:41 GMT" (V1 Date) and "20221228T102741Z" (V4 x-oss-date). */
void osssign_http_date(time_t t, char out[30]);
void osssign_iso8601(time_t t, char out[17]);

/* ---- V1 ---- */

/*
 * The V1 string to sign: VERB, Content-MD5, Content-Type, date, the x-oss- headers
 * (lower-cased, sorted, "name:value\n"), and the canonical resource /bucket/key with the
 * signed sub-resources (acl, uploads, uploadId, partNumber, delete, continuation-token,
 * response-*, versionId, ... and every x-oss- parameter) sorted, "k" alone when empty.
 * date is the Date header's value (or, for a signed URL, Expires).
 */
char *osssign_v1_string_to_sign(const struct osssign_req *r, const char *date);
/* base64(HMAC-SHA1(secret, sts)) into out. Returns 0, or -1 on a crypto failure. */
int osssign_v1_signature(const char *secret, const char *sts, char out[OSSSIGN_V1_SIG_LEN + 1]);
/* "OSS <ak>:<signature>" for the Authorization header. */
char *osssign_v1_authorization(const struct osssign_req *r, const char *ak, const char *sk,
                               const char *date);
/*
 * The query string of a V1 signed URL: the request's own parameters, then OSSAccessKeyId,
 * Expires (a Unix time) and Signature, every name and value URI-encoded.
 */
char *osssign_v1_presign_query(const struct osssign_req *r, const char *ak, const char *sk,
                               int64_t expires);

/* ---- V4 ---- */

/*
 * The V4 canonical request: VERB, URI-encoded /bucket/key, the canonical query (every
 * parameter but exclude_query, names and values URI-encoded, sorted, "k" alone when the
 * value is empty), the canonical headers (content-type, content-md5, every x-oss- header and
 * the additional ones, lower-cased and sorted, "name:value\n"), the additional header names
 * joined by ';', and the x-oss-content-sha256 header's value (UNSIGNED-PAYLOAD without it).
 * additional: lower-case header names, sorted (nadd may be 0).
 */
char *osssign_v4_canonical_request(const struct osssign_req *r, const char *const *additional,
                                   size_t nadd, const char *exclude_query);
/* "OSS4-HMAC-SHA256\n<datetime>\n<scope>\n<hex sha256 of creq>". */
char *osssign_v4_string_to_sign(const char *datetime, const char *scope, const char *creq);
/* hex(HMAC-SHA256(signing key of secret/date8/region/oss, sts)). Returns 0 or -1. */
int osssign_v4_signature(const char *secret, const char *date8, const char *region, const char *sts,
                         char out[OSSSIGN_V4_SIG_LEN + 1]);
/*
 * The Authorization header value: "OSS4-HMAC-SHA256 Credential=<ak>/<date>/<region>/oss/
 * aliyun_v4_request[,AdditionalHeaders=a;b],Signature=<hex>". The request's headers must
 * carry x-oss-date (yyyymmddThhmmssZ) and should carry x-oss-content-sha256. region is the
 * bare region ("cn-hangzhou", no "oss-" prefix). NULL also when x-oss-date is missing.
 */
char *osssign_v4_authorization(const struct osssign_req *r, const char *ak, const char *sk,
                               const char *region, const char *const *additional, size_t nadd);
/*
 * The query string of a V4 presigned URL: the request's parameters plus
 * x-oss-signature-version, x-oss-credential, x-oss-date, x-oss-expires (seconds, 1..604800),
 * x-oss-additional-headers when nadd > 0, and x-oss-signature; URI-encoded, sorted.
 */
char *osssign_v4_presign_query(const struct osssign_req *r, const char *ak, const char *sk,
                               const char *region, const char *datetime, int64_t expires,
                               const char *const *additional, size_t nadd);

#endif
