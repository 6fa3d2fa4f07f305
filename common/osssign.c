/* OSS request signatures V1 and V4 (see osssign.h). */
#include "osssign.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "buf.h"

/* ---- strings in a struct buf; any failure sticks and the result is NULL ---- */

/* The parts of one request: bounded by construction. */
#define SB_INIT BUF_INIT(BUF_UNCAPPED)

/* A failed builder holds nothing and, with max 0, takes nothing more. */
static void sb_fail(struct buf *b)
{
    buf_free(b);
    b->max = 0;
}

static bool sb_failed(const struct buf *b)
{
    return b->max == 0;
}

static void sb_addn(struct buf *b, const char *s, size_t n)
{
    if (!sb_failed(b) && buf_append(b, s, n) != BUF_OK)
        sb_fail(b);
}

static void sb_add(struct buf *b, const char *s)
{
    sb_addn(b, s ? s : "", s ? strlen(s) : 0);
}

static void sb_addc(struct buf *b, char c)
{
    sb_addn(b, &c, 1);
}

/* The string, or NULL after an allocation failure. "" for an empty builder. */
static char *sb_take(struct buf *b)
{
    if (sb_failed(b)) {
        *b = SB_INIT;
        return NULL;
    }
    return buf_take(b);
}

static void sb_uri_encode(struct buf *b, const char *s, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~' ||
            (keep_slash && *p == '/')) {
            sb_addc(b, (char)*p);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            sb_addn(b, e, 3);
        }
    }
}

char *osssign_uri_encode(const char *s, int keep_slash)
{
    struct buf b = SB_INIT;
    sb_uri_encode(&b, s, keep_slash != 0);
    return sb_take(&b);
}

void osssign_http_date(time_t t, char out[30])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    /* The C locale (the daemon never sets another) gives RFC 1123's English names. */
    if (strftime(out, 30, "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
        out[0] = '\0';
}

void osssign_iso8601(time_t t, char out[17])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    if (strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) == 0)
        out[0] = '\0';
}

/* ---- helpers over the request ---- */

static const char *header_get(const struct osssign_req *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value ? r->headers[i].value : "";
    return NULL;
}

/* Appends s without leading and trailing white space (Python's str.strip). */
static void sb_add_trimmed(struct buf *b, const char *s)
{
    if (!s)
        return;
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    sb_addn(b, s, n);
}

static char *lower_dup(const char *s)
{
    char *d = strdup(s);
    for (char *p = d; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

struct pair {
    char *name;
    char *value;
};

static int cmp_pair(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

static void pairs_free(struct pair *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].name);
        free(p[i].value);
    }
    free(p);
}

static bool hmac(const EVP_MD *md, const void *key, size_t keylen, const void *data, size_t len,
                 unsigned char *out, unsigned *outlen)
{
    return HMAC(md, key, (int)keylen, data, len, out, outlen) != NULL;
}

static void hex_encode(const unsigned char *d, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[2 * n] = '\0';
}

/* ---- V1 ---- */

/* The query parameters that are part of V1's canonicalized resource (besides x-oss-*). */
static const char *const v1_subresources[] = {"acl",
                                              "uploads",
                                              "location",
                                              "cors",
                                              "logging",
                                              "website",
                                              "referer",
                                              "lifecycle",
                                              "delete",
                                              "append",
                                              "tagging",
                                              "objectMeta",
                                              "uploadId",
                                              "partNumber",
                                              "security-token",
                                              "position",
                                              "img",
                                              "style",
                                              "styleName",
                                              "replication",
                                              "replicationProgress",
                                              "replicationLocation",
                                              "cname",
                                              "bucketInfo",
                                              "comp",
                                              "qos",
                                              "live",
                                              "status",
                                              "vod",
                                              "startTime",
                                              "endTime",
                                              "symlink",
                                              "response-content-type",
                                              "response-content-language",
                                              "response-expires",
                                              "response-cache-control",
                                              "response-content-disposition",
                                              "response-content-encoding",
                                              "udf",
                                              "udfName",
                                              "udfImage",
                                              "udfId",
                                              "udfImageDesc",
                                              "udfApplication",
                                              "udfApplicationLog",
                                              "restore",
                                              "callback",
                                              "callback-var",
                                              "qosInfo",
                                              "policy",
                                              "stat",
                                              "encryption",
                                              "versions",
                                              "versioning",
                                              "versionId",
                                              "requestPayment",
                                              "sequential",
                                              "inventory",
                                              "inventoryId",
                                              "continuation-token",
                                              "asyncFetch",
                                              "worm",
                                              "wormId",
                                              "wormExtend",
                                              "withHashContext",
                                              "transferAcceleration",
                                              "regionList",
                                              "cloudboxes",
                                              "metaQuery",
                                              "resourceGroup",
                                              "rtc",
                                              "responseHeader"};

static bool v1_signed_param(const char *name)
{
    if (strncmp(name, "x-oss-", 6) == 0)
        return true;
    for (size_t i = 0; i < sizeof(v1_subresources) / sizeof(v1_subresources[0]); i++)
        if (strcmp(name, v1_subresources[i]) == 0)
            return true;
    return false;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const struct pair *)a)->name, ((const struct pair *)b)->name);
}

static void v1_canonical_resource(struct buf *b, const struct osssign_req *r)
{
    sb_addc(b, '/');
    if (r->bucket && *r->bucket) {
        sb_add(b, r->bucket);
        sb_addc(b, '/');
    }
    sb_add(b, r->key);
    /* Signed sub-resources; a repeated name keeps its last value (as the emulator's dict). */
    struct pair *p = calloc(r->nquery ? r->nquery : 1, sizeof(*p));
    size_t n = 0;
    if (!p) {
        sb_fail(b);
        return;
    }
    for (size_t i = 0; i < r->nquery && !sb_failed(b); i++) {
        if (!v1_signed_param(r->query[i].name))
            continue;
        size_t j = 0;
        while (j < n && strcmp(p[j].name, r->query[i].name) != 0)
            j++;
        if (j == n)
            n++;
        else
            free(p[j].value);
        if (!p[j].name)
            p[j].name = strdup(r->query[i].name);
        p[j].value = strdup(r->query[i].value ? r->query[i].value : "");
        if (!p[j].name || !p[j].value)
            sb_fail(b);
    }
    if (!sb_failed(b) && n) {
        qsort(p, n, sizeof(*p), cmp_name);
        for (size_t i = 0; i < n; i++) {
            sb_addc(b, i ? '&' : '?');
            sb_add(b, p[i].name);
            if (*p[i].value) {
                sb_addc(b, '=');
                sb_add(b, p[i].value);
            }
        }
    }
    pairs_free(p, n);
}

char *osssign_v1_string_to_sign(const struct osssign_req *r, const char *date)
{
    struct buf b = SB_INIT;
    const char *md5 = header_get(r, "content-md5");
    const char *ctype = header_get(r, "content-type");
    sb_add(&b, r->method);
    sb_addc(&b, '\n');
    sb_add(&b, md5);
    sb_addc(&b, '\n');
    sb_add(&b, ctype);
    sb_addc(&b, '\n');
    sb_add(&b, date);
    sb_addc(&b, '\n');
    struct pair *h = calloc(r->nheaders ? r->nheaders : 1, sizeof(*h));
    size_t n = 0;
    if (!h)
        sb_fail(&b);
    for (size_t i = 0; h && i < r->nheaders; i++) {
        if (strncasecmp(r->headers[i].name, "x-oss-", 6) != 0)
            continue;
        struct buf v = SB_INIT;
        sb_add_trimmed(&v, r->headers[i].value);
        h[n].name = lower_dup(r->headers[i].name);
        h[n].value = sb_take(&v);
        if (!h[n].name || !h[n].value)
            sb_fail(&b);
        n++;
    }
    if (!sb_failed(&b)) {
        qsort(h, n, sizeof(*h), cmp_pair);
        for (size_t i = 0; i < n; i++) {
            sb_add(&b, h[i].name);
            sb_addc(&b, ':');
            sb_add(&b, h[i].value);
            sb_addc(&b, '\n');
        }
        v1_canonical_resource(&b, r);
    }
    pairs_free(h, n);
    return sb_take(&b);
}

int osssign_v1_signature(const char *secret, const char *sts, char out[OSSSIGN_V1_SIG_LEN + 1])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (!hmac(EVP_sha1(), secret, strlen(secret), sts, strlen(sts), mac, &len) || len != 20)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, mac, (int)len);
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

char *osssign_v1_authorization(const struct osssign_req *r, const char *ak, const char *sk,
                               const char *date)
{
    char sig[OSSSIGN_V1_SIG_LEN + 1];
    char *sts = osssign_v1_string_to_sign(r, date);
    if (!sts)
        return NULL;
    int rc = osssign_v1_signature(sk, sts, sig);
    free(sts);
    if (rc != 0)
        return NULL;
    struct buf b = SB_INIT;
    sb_add(&b, "OSS ");
    sb_add(&b, ak);
    sb_addc(&b, ':');
    sb_add(&b, sig);
    return sb_take(&b);
}

static void sb_add_param(struct buf *b, const char *name, const char *value)
{
    if (b->len)
        sb_addc(b, '&');
    sb_uri_encode(b, name, false);
    if (value && *value) {
        sb_addc(b, '=');
        sb_uri_encode(b, value, false);
    }
}

char *osssign_v1_presign_query(const struct osssign_req *r, const char *ak, const char *sk,
                               int64_t expires)
{
    char exp[24], sig[OSSSIGN_V1_SIG_LEN + 1];
    snprintf(exp, sizeof(exp), "%" PRId64, expires);
    char *sts = osssign_v1_string_to_sign(r, exp);
    if (!sts)
        return NULL;
    int rc = osssign_v1_signature(sk, sts, sig);
    free(sts);
    if (rc != 0)
        return NULL;
    struct buf b = SB_INIT;
    for (size_t i = 0; i < r->nquery; i++)
        sb_add_param(&b, r->query[i].name, r->query[i].value);
    sb_add_param(&b, "OSSAccessKeyId", ak);
    sb_add_param(&b, "Expires", exp);
    sb_add_param(&b, "Signature", sig);
    return sb_take(&b);
}

/* ---- V4 ---- */

/* The canonical query: encoded (name, value) pairs sorted, '&'-joined, "k" alone if empty. */
static void v4_canonical_query(struct buf *b, const struct osssign_kv *q, size_t nq,
                               const char *exclude)
{
    struct pair *p = calloc(nq ? nq : 1, sizeof(*p));
    size_t n = 0;
    if (!p) {
        sb_fail(b);
        return;
    }
    for (size_t i = 0; i < nq; i++) {
        if (exclude && strcmp(q[i].name, exclude) == 0)
            continue;
        p[n].name = osssign_uri_encode(q[i].name, 0);
        p[n].value = osssign_uri_encode(q[i].value, 0);
        n++;
        if (!p[n - 1].name || !p[n - 1].value)
            sb_fail(b);
    }
    if (!sb_failed(b)) {
        qsort(p, n, sizeof(*p), cmp_pair);
        for (size_t i = 0; i < n; i++) {
            if (i)
                sb_addc(b, '&');
            sb_add(b, p[i].name);
            if (*p[i].value) {
                sb_addc(b, '=');
                sb_add(b, p[i].value);
            }
        }
    }
    pairs_free(p, n);
}

static bool v4_is_additional(const char *lname, const char *const *additional, size_t nadd)
{
    for (size_t i = 0; i < nadd; i++)
        if (strcmp(lname, additional[i]) == 0)
            return true;
    return false;
}

static void v4_canonical_headers(struct buf *b, const struct osssign_req *r,
                                 const char *const *additional, size_t nadd)
{
    struct pair *p = calloc(r->nheaders + nadd + 1, sizeof(*p));
    size_t n = 0;
    if (!p) {
        sb_fail(b);
        return;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        char *l = lower_dup(r->headers[i].name);
        if (!l) {
            sb_fail(b);
            break;
        }
        if (strcmp(l, "content-type") != 0 && strcmp(l, "content-md5") != 0 &&
            strncmp(l, "x-oss-", 6) != 0 && !v4_is_additional(l, additional, nadd)) {
            free(l);
            continue;
        }
        struct buf v = SB_INIT;
        sb_add_trimmed(&v, r->headers[i].value);
        p[n].name = l;
        p[n].value = sb_take(&v);
        if (!p[n++].value)
            sb_fail(b);
    }
    /* An additional header that is not in the request is signed with an empty value. */
    for (size_t i = 0; !sb_failed(b) && i < nadd; i++) {
        bool found = false;
        for (size_t j = 0; j < n && !found; j++)
            found = strcmp(p[j].name, additional[i]) == 0;
        if (found)
            continue;
        p[n].name = strdup(additional[i]);
        p[n].value = strdup("");
        if (!p[n++].value || !p[n - 1].name)
            sb_fail(b);
    }
    if (!sb_failed(b)) {
        qsort(p, n, sizeof(*p), cmp_pair);
        for (size_t i = 0; i < n; i++) {
            sb_add(b, p[i].name);
            sb_addc(b, ':');
            sb_add(b, p[i].value);
            sb_addc(b, '\n');
        }
    }
    pairs_free(p, n);
}

static void sb_add_additional(struct buf *b, const char *const *additional, size_t nadd)
{
    for (size_t i = 0; i < nadd; i++) {
        if (i)
            sb_addc(b, ';');
        sb_add(b, additional[i]);
    }
}

char *osssign_v4_canonical_request(const struct osssign_req *r, const char *const *additional,
                                   size_t nadd, const char *exclude_query)
{
    struct buf b = SB_INIT;
    struct buf uri = SB_INIT;
    sb_add(&b, r->method);
    sb_addc(&b, '\n');
    sb_addc(&uri, '/');
    if (r->bucket && *r->bucket) {
        sb_add(&uri, r->bucket);
        sb_addc(&uri, '/');
    }
    sb_add(&uri, r->key);
    char *u = sb_take(&uri);
    if (!u)
        sb_fail(&b);
    sb_uri_encode(&b, u, true);
    free(u);
    sb_addc(&b, '\n');
    v4_canonical_query(&b, r->query, r->nquery, exclude_query);
    sb_addc(&b, '\n');
    v4_canonical_headers(&b, r, additional, nadd);
    sb_addc(&b, '\n');
    sb_add_additional(&b, additional, nadd);
    sb_addc(&b, '\n');
    const char *payload = header_get(r, "x-oss-content-sha256");
    sb_add(&b, payload ? payload : "UNSIGNED-PAYLOAD");
    return sb_take(&b);
}

char *osssign_v4_string_to_sign(const char *datetime, const char *scope, const char *creq)
{
    unsigned char md[32];
    char hex[65];
    if (!EVP_Digest(creq, strlen(creq), md, NULL, EVP_sha256(), NULL))
        return NULL;
    hex_encode(md, 32, hex);
    struct buf b = SB_INIT;
    sb_add(&b, "OSS4-HMAC-SHA256\n");
    sb_add(&b, datetime);
    sb_addc(&b, '\n');
    sb_add(&b, scope);
    sb_addc(&b, '\n');
    sb_add(&b, hex);
    return sb_take(&b);
}

int osssign_v4_signature(const char *secret, const char *date8, const char *region, const char *sts,
                         char out[OSSSIGN_V4_SIG_LEN + 1])
{
    int result = -1;
    unsigned char k[EVP_MAX_MD_SIZE], k2[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    size_t slen = strlen(secret);
    char *key = malloc(slen + 10);
    if (!key)
        return -1;
    memcpy(key, "aliyun_v4", 9);
    memcpy(key + 9, secret, slen + 1);
    const char *parts[] = {region, "oss", "aliyun_v4_request"};
    if (!hmac(EVP_sha256(), key, slen + 9, date8, strlen(date8), k, &len))
        goto out;
    for (size_t i = 0; i < 3; i++) {
        if (!hmac(EVP_sha256(), k, len, parts[i], strlen(parts[i]), k2, &len))
            goto out;
        memcpy(k, k2, len);
    }
    if (!hmac(EVP_sha256(), k, len, sts, strlen(sts), k2, &len) || len != 32)
        goto out;
    hex_encode(k2, 32, out);
    result = 0;
out:
    OPENSSL_cleanse(key, slen + 10);
    OPENSSL_cleanse(k, sizeof(k));
    OPENSSL_cleanse(k2, sizeof(k2));
    free(key);
    return result;
}

/* scope "<date8>/<region>/oss/aliyun_v4_request" into out; -1 when datetime is malformed. */
static int v4_scope(const char *datetime, const char *region, char *out, size_t cap)
{
    if (!datetime || strlen(datetime) != 16 || datetime[8] != 'T')
        return -1;
    int n = snprintf(out, cap, "%.8s/%s/oss/aliyun_v4_request", datetime, region);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

/* The signature of r (with the given query exclusion) into sig; 0 or -1. */
static int v4_sign(const struct osssign_req *r, const char *sk, const char *region,
                   const char *datetime, const char *scope, const char *const *additional,
                   size_t nadd, const char *exclude, char sig[OSSSIGN_V4_SIG_LEN + 1])
{
    char *creq = osssign_v4_canonical_request(r, additional, nadd, exclude);
    char *sts = creq ? osssign_v4_string_to_sign(datetime, scope, creq) : NULL;
    char date8[9];
    memcpy(date8, datetime, 8);
    date8[8] = '\0';
    int rc = sts ? osssign_v4_signature(sk, date8, region, sts, sig) : -1;
    free(creq);
    free(sts);
    return rc;
}

char *osssign_v4_authorization(const struct osssign_req *r, const char *ak, const char *sk,
                               const char *region, const char *const *additional, size_t nadd)
{
    char scope[256], sig[OSSSIGN_V4_SIG_LEN + 1];
    const char *dt = header_get(r, "x-oss-date");
    if (v4_scope(dt, region, scope, sizeof(scope)) != 0)
        return NULL;
    if (v4_sign(r, sk, region, dt, scope, additional, nadd, NULL, sig) != 0)
        return NULL;
    struct buf b = SB_INIT;
    sb_add(&b, "OSS4-HMAC-SHA256 Credential=");
    sb_add(&b, ak);
    sb_addc(&b, '/');
    sb_add(&b, scope);
    if (nadd) {
        sb_add(&b, ",AdditionalHeaders=");
        sb_add_additional(&b, additional, nadd);
    }
    sb_add(&b, ",Signature=");
    sb_add(&b, sig);
    return sb_take(&b);
}

char *osssign_v4_presign_query(const struct osssign_req *r, const char *ak, const char *sk,
                               const char *region, const char *datetime, int64_t expires,
                               const char *const *additional, size_t nadd)
{
    char scope[256], cred[512], exp[24], sig[OSSSIGN_V4_SIG_LEN + 1];
    char *result = NULL;
    if (v4_scope(datetime, region, scope, sizeof(scope)) != 0)
        return NULL;
    int n = snprintf(cred, sizeof(cred), "%s/%s", ak, scope);
    if (n < 0 || (size_t)n >= sizeof(cred))
        return NULL;
    snprintf(exp, sizeof(exp), "%" PRId64, expires);
    struct buf add = SB_INIT;
    sb_add_additional(&add, additional, nadd);
    char *addl = sb_take(&add);
    struct osssign_kv *q = calloc(r->nquery + 6, sizeof(*q));
    if (!q || !addl)
        goto out;
    if (r->nquery)
        memcpy(q, r->query, r->nquery * sizeof(*q));
    size_t nq = r->nquery;
    q[nq++] = (struct osssign_kv){"x-oss-signature-version", "OSS4-HMAC-SHA256"};
    q[nq++] = (struct osssign_kv){"x-oss-credential", cred};
    q[nq++] = (struct osssign_kv){"x-oss-date", datetime};
    q[nq++] = (struct osssign_kv){"x-oss-expires", exp};
    if (nadd)
        q[nq++] = (struct osssign_kv){"x-oss-additional-headers", addl};
    struct osssign_req signed_req = *r;
    signed_req.query = q;
    signed_req.nquery = nq;
    if (v4_sign(&signed_req, sk, region, datetime, scope, additional, nadd, "x-oss-signature",
                sig) != 0)
        goto out;
    q[nq++] = (struct osssign_kv){"x-oss-signature", sig};
    struct buf b = SB_INIT;
    v4_canonical_query(&b, q, nq, NULL);
    result = sb_take(&b);
out:
    free(q);
    free(addl);
    return result;
}
