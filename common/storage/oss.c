/*
 * The Aliyun OSS storage driver: distribution's layout as object keys in a bucket.
 *
 * Blocking by design: each operation is one or more HTTP requests made with libcurl easy
 * handles on the calling thread (the daemon calls remote drivers from worker threads). Easy
 * handles are pooled; connections and DNS answers are shared between them through a CURLSH
 * guarded by mutexes, so concurrent calls reuse keep-alive connections. Nothing else in
 * struct oss_storage changes after storage_oss_new, so any number of threads may call in.
 *
 * Keys: rootdirectory (without its slashes) + the driver path. A "directory" is a key
 * prefix ending in '/': it exists while any key has that prefix.
 *
 * Requests are signed with V4 (default) or V1 (osssign.c) on every attempt (fresh date);
 * 5xx, 429 and connection failures are retried with exponential backoff. Errors are logged
 * once with OSS's Code, Message, RequestId and EC; the secret never reaches a log line (it is
 * only an HMAC key), and neither do Authorization headers or signed URLs.
 */
#include "storage.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "buf.h"
#include "log.h"
#include "osssign.h"
#include "ossxml.h"

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

#define OSS_KEY_MAX 1023            /* OSS's limit on a key's bytes */
#define OSS_MAX_PARTS 10000         /* parts per multipart upload */
#define OSS_MIN_PART (100 * KIB)    /* every part but the last */
#define OSS_MAX_PART (5 * GIB)      /* one part, and one PutObject */
#define OSS_XML_MAX (8 * MIB)       /* XML answers kept in memory (a listing page is ~1 MB) */
#define OSS_ERR_BODY_MAX (64 * KIB) /* error bodies kept (the rest is dropped) */
#define OSS_POOL_MAX 16             /* idle easy handles kept */
#define OSS_QUERY_MAX 8
#define OSS_HEADERS_MAX 12

struct oss_storage {
    struct storage base;
    char *ak, *sk;
    char *bucket;
    char *region; /* signing region, without "oss-" */
    char *scheme; /* "http" or "https" */
    char *host;   /* host[:port] requests go to: "<bucket>.<endpoint>" or the custom domain */
    char *root;   /* key prefix, no leading or trailing '/' ("" for none) */
    char *kms_key;
    bool encrypt;
    int sigversion;
    uint64_t chunksize, copy_limit;
    unsigned list_max, delete_max;
    int retries;
    long retry_base_ms, connect_timeout_ms, low_speed_time_s;

    CURLSH *share;
    pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
    pthread_mutex_t pool_lock;
    CURL *pool[OSS_POOL_MAX];
    size_t npool;
};

/* One request: what to send and where the answer goes. */
struct oss_call {
    const char *what; /* operation name for logs */
    const char *method;
    const char *key; /* full key; "" for the bucket */
    struct osssign_kv query[OSS_QUERY_MAX];
    size_t nquery;
    struct osssign_kv headers[OSS_HEADERS_MAX];
    size_t nheaders;
    const void *body;
    size_t body_len;
    bool has_body;     /* PUT/POST: send body (possibly empty) with Content-Length */
    size_t max_body;   /* 2xx bodies kept up to this (with max_body_set, else OSS_XML_MAX) */
    bool max_body_set; /* max_body applies, even 0; more is too_large */
    /* Streaming 2xx bodies: skip the first `skip` bytes, pass at most `limit` (0: all). */
    storage_read_cb sink;
    void *sink_ctx;
    uint64_t skip, limit;
    bool quiet; /* NOT_FOUND and RANGE_INVALID are expected answers: do not log them */
};

struct oss_resp {
    long status;
    struct buf body; /* capped at the status line: see on_header */
    bool too_large;
    bool sink_stopped;
    uint64_t delivered; /* bytes passed to the sink */
    uint64_t seen;      /* 2xx body bytes received (skip accounting) */
    char etag[80];
    uint64_t content_length;
    bool has_length;
    time_t mtime;
    char request_id[64];
    char oss_err[1024]; /* x-oss-err (base64 error XML) of a HEAD answer */
    char content_range[96];
    const struct oss_call *call;
};

static void resp_reset(struct oss_resp *r)
{
    buf_free(&r->body);
    const struct oss_call *c = r->call;
    memset(r, 0, sizeof(*r));
    r->call = c;
}

/* ---- construction helpers ---- */

static char *xstrdup(const char *s)
{
    return strdup(s ? s : "");
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud)
{
    struct oss_storage *o = ud;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&o->share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud)
{
    struct oss_storage *o = ud;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&o->share_locks[data]);
}

static CURL *handle_get(struct oss_storage *o)
{
    CURL *h = NULL;
    pthread_mutex_lock(&o->pool_lock);
    if (o->npool > 0)
        h = o->pool[--o->npool];
    pthread_mutex_unlock(&o->pool_lock);
    if (!h)
        h = curl_easy_init();
    return h;
}

static void handle_put(struct oss_storage *o, CURL *h)
{
    if (!h)
        return;
    curl_easy_reset(h);
    pthread_mutex_lock(&o->pool_lock);
    if (o->npool < OSS_POOL_MAX) {
        o->pool[o->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&o->pool_lock);
    if (h)
        curl_easy_cleanup(h);
}

/* ---- keys ---- */

/* The key of driver path (root + path), into buf. -1 when it is over OSS's limit. */
static int oss_key(const struct oss_storage *o, const char *path, char *buf, size_t cap)
{
    while (*path == '/')
        path++;
    int n;
    if (*o->root && *path)
        n = snprintf(buf, cap, "%s/%s", o->root, path);
    else
        n = snprintf(buf, cap, "%s", *o->root ? o->root : path);
    if (n < 0 || (size_t)n >= cap || n > OSS_KEY_MAX) {
        log_error("oss: key too long for %s", path);
        return -1;
    }
    while (n > 0 && buf[n - 1] == '/')
        buf[--n] = '\0';
    return 0;
}

/* The listing prefix of directory key ("" for the bucket's root). */
static void dir_prefix(const char *key, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s", key, *key ? "/" : "");
}

#define OSS_KEY(o, path, buf)                                                                      \
    char buf[OSS_KEY_MAX + 2];                                                                     \
    if (oss_key(o, path, buf, sizeof(buf)) != 0)                                                   \
        return REG_ERR_INTERNAL;

/* ---- the HTTP exchange ---- */

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct oss_resp *r = ud;
    size_t n = size * nmemb;
    size_t len = n;
    while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
        len--;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue, say): forget the previous one's fields. */
        resp_reset(r);
        const char *sp = memchr(p, ' ', len);
        if (sp)
            r->status = strtol(sp + 1, NULL, 10);
        const struct oss_call *c = r->call;
        bool ok = r->status >= 200 && r->status < 300;
        buf_init(&r->body, ok ? (c->max_body_set ? c->max_body : OSS_XML_MAX) : OSS_ERR_BODY_MAX);
        return n;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon)
        return n;
    size_t nlen = (size_t)(colon - p);
    const char *v = colon + 1;
    size_t vlen = len - nlen - 1;
    while (vlen > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    char *dst = NULL;
    size_t cap = 0;
    char tmp[128] = "";
    if (nlen == 4 && strncasecmp(p, "ETag", 4) == 0) {
        dst = r->etag;
        cap = sizeof(r->etag);
    } else if (nlen == 16 && strncasecmp(p, "x-oss-request-id", 16) == 0) {
        dst = r->request_id;
        cap = sizeof(r->request_id);
    } else if (nlen == 9 && strncasecmp(p, "x-oss-err", 9) == 0) {
        dst = r->oss_err;
        cap = sizeof(r->oss_err);
    } else if (nlen == 13 && strncasecmp(p, "Content-Range", 13) == 0) {
        dst = r->content_range;
        cap = sizeof(r->content_range);
    } else if ((nlen == 14 && strncasecmp(p, "Content-Length", 14) == 0) ||
               (nlen == 13 && strncasecmp(p, "Last-Modified", 13) == 0)) {
        dst = tmp;
        cap = sizeof(tmp);
    }
    if (!dst || vlen >= cap)
        return n;
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
    if (dst == tmp && nlen == 14) {
        char *end;
        errno = 0;
        unsigned long long cl = strtoull(tmp, &end, 10);
        if (!errno && end != tmp && *end == '\0' && tmp[0] != '-') {
            r->content_length = cl;
            r->has_length = true;
        }
    } else if (dst == tmp) {
        time_t t = curl_getdate(tmp, NULL);
        r->mtime = t > 0 ? t : 0;
    }
    return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct oss_resp *r = ud;
    const struct oss_call *c = r->call;
    size_t n = size * nmemb;
    bool ok = r->status >= 200 && r->status < 300;
    if (ok && c->sink) {
        const char *d = p;
        size_t k = n;
        /* skip applies to a 200 (the whole object) only: a 206 starts where asked */
        uint64_t skip = r->status == 200 ? c->skip : 0;
        if (r->seen < skip) {
            uint64_t drop = skip - r->seen;
            size_t cut = drop < k ? (size_t)drop : k;
            d += cut;
            k -= cut;
        }
        r->seen += n;
        if (c->limit && r->delivered + k > c->limit)
            k = (size_t)(c->limit - r->delivered);
        if (k > 0) {
            if (c->sink(c->sink_ctx, d, k) != 0) {
                r->sink_stopped = true;
                return 0;
            }
            r->delivered += k;
        }
        return n;
    }
    enum buf_rc rc = buf_append(&r->body, p, n);
    if (rc == BUF_TOO_BIG && ok) {
        r->too_large = true;
        return 0;
    }
    if (rc == BUF_TOO_BIG) /* keep the start of an error body */
        rc = buf_append(&r->body, p, r->body.max - r->body.len);
    return rc == BUF_OK ? n : 0;
}

static bool retryable_curl(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return true;
    default:
        return false;
    }
}

static void backoff(const struct oss_storage *o, int attempt)
{
    long ms = o->retry_base_ms;
    for (int i = 0; i < attempt && ms < 5000; i++)
        ms *= 2;
    if (ms > 5000)
        ms = 5000;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    ms += ms > 1 ? (long)(now.tv_nsec % (ms / 2 + 1)) : 0; /* jitter */
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Appends "name=value" (URI-encoded, "name" alone for an empty value) to the URL. */
static bool url_add_query(struct buf *url, const struct osssign_kv *q, size_t nq)
{
    for (size_t i = 0; i < nq; i++) {
        char *k = osssign_uri_encode(q[i].name, 0);
        char *v = osssign_uri_encode(q[i].value, 0);
        bool ok =
            k && v && buf_printf(url, "%c%s%s%s", i ? '&' : '?', k, *v ? "=" : "", v) == BUF_OK;
        free(k);
        free(v);
        if (!ok)
            return false;
    }
    return true;
}

/* "scheme://host/<encoded key>" plus the query; NULL when out of memory. */
static char *build_url(const struct oss_storage *o, const char *key, const struct osssign_kv *q,
                       size_t nq)
{
    /* bounded by construction: a key of at most OSS_KEY_MAX and OSS_QUERY_MAX parameters */
    struct buf url = BUF_INIT(BUF_UNCAPPED);
    char *ek = osssign_uri_encode(key, 1);
    bool ok = ek && buf_printf(&url, "%s://%s/%s", o->scheme, o->host, ek) == BUF_OK &&
              url_add_query(&url, q, nq);
    free(ek);
    if (!ok) {
        buf_free(&url);
        return NULL;
    }
    return buf_take(&url);
}

/*
 * Signs the call's headers (a fresh date each attempt) into a curl header list. The
 * Authorization value is only ever in this list.
 */
static struct curl_slist *signed_headers(const struct oss_storage *o, const struct oss_call *c)
{
    struct osssign_kv h[OSS_HEADERS_MAX + 3];
    size_t nh = 0;
    char date[30], iso[17];
    time_t now = time(NULL);
    for (size_t i = 0; i < c->nheaders; i++)
        h[nh++] = c->headers[i];
    if (o->sigversion == 1) {
        osssign_http_date(now, date);
        h[nh++] = (struct osssign_kv){"Date", date};
    } else {
        osssign_iso8601(now, iso);
        h[nh++] = (struct osssign_kv){"x-oss-date", iso};
        h[nh++] = (struct osssign_kv){"x-oss-content-sha256", "UNSIGNED-PAYLOAD"};
    }
    struct osssign_req req = {.method = c->method,
                              .bucket = o->bucket,
                              .key = c->key,
                              .query = c->query,
                              .nquery = c->nquery,
                              .headers = h,
                              .nheaders = nh};
    char *auth = o->sigversion == 1
                     ? osssign_v1_authorization(&req, o->ak, o->sk, date)
                     : osssign_v4_authorization(&req, o->ak, o->sk, o->region, NULL, 0);
    if (!auth)
        return NULL;
    struct curl_slist *list = NULL;
    bool ok = true;
    for (size_t i = 0; i < nh && ok; i++) {
        const char *v = h[i].value ? h[i].value : "";
        size_t n = strlen(h[i].name) + strlen(v) + 3;
        char *line = malloc(n);
        struct curl_slist *nl = NULL;
        if (line) {
            snprintf(line, n, "%s: %s", h[i].name, v);
            nl = curl_slist_append(list, line);
        }
        free(line);
        ok = nl != NULL;
        list = nl ? nl : list;
    }
    /* Authorization, and no "Expect: 100-continue" round trip. */
    size_t alen = strlen(auth) + 32;
    char *aline = malloc(alen);
    if (aline)
        snprintf(aline, alen, "Authorization: %s", auth);
    const char *extra[] = {aline, "Expect:"};
    for (size_t i = 0; i < 2 && ok; i++) {
        struct curl_slist *n = extra[i] ? curl_slist_append(list, extra[i]) : NULL;
        ok = n != NULL;
        list = n ? n : list;
    }
    if (aline)
        OPENSSL_cleanse(aline, alen);
    free(aline);
    OPENSSL_cleanse(auth, strlen(auth));
    free(auth);
    if (!ok) {
        curl_slist_free_all(list);
        return NULL;
    }
    return list;
}

/*
 * Sends the call once. Returns CURLE_OK with r filled (any status), or curl's error; an
 * out-of-memory while building the request is CURLE_OUT_OF_MEMORY.
 */
static CURLcode perform_once(struct oss_storage *o, const struct oss_call *c, struct oss_resp *r)
{
    CURLcode rc = CURLE_OUT_OF_MEMORY;
    CURL *h = handle_get(o);
    char *url = build_url(o, c->key, c->query, c->nquery);
    struct curl_slist *hdrs = signed_headers(o, c);
    if (!h || !url || !hdrs)
        goto out;
    curl_easy_setopt(h, CURLOPT_SHARE, o->share);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, o->low_speed_time_s);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (strcmp(c->method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, c->method);
        if (c->has_body) {
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->body ? c->body : "");
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
        }
    }
    rc = curl_easy_perform(h);
    if (r->sink_stopped)
        rc = CURLE_WRITE_ERROR;
out:
    curl_slist_free_all(hdrs);
    free(url);
    handle_put(o, h);
    return rc;
}

/*
 * Sends the call, retrying 5xx, 429 and connection failures (a streamed call only while
 * nothing was passed to its sink). REG_OK with r holding the final answer (any status), or
 * REG_ERR_UNAVAILABLE / REG_ERR_INTERNAL / REG_ERR_TOO_LARGE (logged; r->delivered tells a
 * streaming caller how far it got).
 */
static enum regerr perform(struct oss_storage *o, const struct oss_call *c, struct oss_resp *r)
{
    for (int attempt = 0;; attempt++) {
        resp_reset(r);
        r->call = c;
        CURLcode rc = perform_once(o, c, r);
        bool last = attempt >= o->retries || r->delivered > 0;
        if (rc == CURLE_OK) {
            log_debug("oss: %s %s %s: %ld", c->what, c->method, c->key, r->status);
            if ((r->status >= 500 || r->status == 429) && !last) {
                log_warn("oss: %s %s: status %ld, retrying (%d)", c->what, c->key, r->status,
                         attempt + 1);
                backoff(o, attempt);
                continue;
            }
            return REG_OK;
        }
        if (r->too_large)
            return REG_ERR_TOO_LARGE;
        if (r->sink_stopped)
            return REG_ERR_INTERNAL;
        if (rc == CURLE_OUT_OF_MEMORY) {
            log_error("oss: %s %s: out of memory", c->what, c->key);
            return REG_ERR_INTERNAL;
        }
        if (retryable_curl(rc) && !last) {
            log_warn("oss: %s %s: %s, retrying (%d)", c->what, c->key, curl_easy_strerror(rc),
                     attempt + 1);
            backoff(o, attempt);
            continue;
        }
        log_error("oss: %s %s: %s", c->what, c->key, curl_easy_strerror(rc));
        return retryable_curl(rc) ? REG_ERR_UNAVAILABLE : REG_ERR_INTERNAL;
    }
}

/* The error of a non-2xx answer, logged once (expected 404s are not). */
static enum regerr fail(const struct oss_call *c, const struct oss_resp *r)
{
    struct ossxml_error e;
    memset(&e, 0, sizeof(e));
    if (r->body.len > 0) {
        ossxml_parse_error(r->body.p, r->body.len, &e);
    } else if (r->oss_err[0]) {
        /* HEAD answers carry the error XML base64-encoded in x-oss-err. */
        unsigned char xml[sizeof(r->oss_err)];
        int n = EVP_DecodeBlock(xml, (const unsigned char *)r->oss_err, (int)strlen(r->oss_err));
        size_t len = n > 0 ? (size_t)n : 0;
        while (len > 0 && xml[len - 1] == '\0')
            len--; /* EVP_DecodeBlock pads */
        if (len)
            ossxml_parse_error((const char *)xml, len, &e);
    }
    enum regerr err = ossxml_regerr(r->status, e.code);
    if ((err == REG_ERR_NOT_FOUND || err == REG_ERR_RANGE_INVALID) && c->quiet)
        return err;
    log_error("oss: %s %s: %ld %s: %s (request id %s, ec %s)", c->what, c->key, r->status,
              e.code[0] ? e.code : "-", e.message[0] ? e.message : "-",
              e.request_id[0] ? e.request_id : (r->request_id[0] ? r->request_id : "-"),
              e.ec[0] ? e.ec : "-");
    return err;
}

/* perform() and then 2xx -> REG_OK, else fail(). */
static enum regerr call(struct oss_storage *o, const struct oss_call *c, struct oss_resp *r)
{
    enum regerr result = perform(o, c, r);
    if (result != REG_OK)
        return result;
    if (r->status < 200 || r->status >= 300)
        return fail(c, r);
    return REG_OK;
}

static void add_header(struct oss_call *c, const char *name, const char *value)
{
    if (c->nheaders < OSS_HEADERS_MAX)
        c->headers[c->nheaders++] = (struct osssign_kv){name, value};
}

static void add_query(struct oss_call *c, const char *name, const char *value)
{
    if (c->nquery < OSS_QUERY_MAX)
        c->query[c->nquery++] = (struct osssign_kv){name, value};
}

/* Server-side encryption headers for objects this driver creates. */
static void add_sse(const struct oss_storage *o, struct oss_call *c)
{
    if (!o->encrypt)
        return;
    if (*o->kms_key) {
        add_header(c, "x-oss-server-side-encryption", "KMS");
        add_header(c, "x-oss-server-side-encryption-key-id", o->kms_key);
    } else {
        add_header(c, "x-oss-server-side-encryption", "AES256");
    }
}

static void md5_base64(const void *data, size_t len, char out[25])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_Digest(data, len, md, &n, EVP_md5(), NULL);
    EVP_EncodeBlock((unsigned char *)out, md, (int)n);
}

/* ---- operations ---- */

static enum regerr oss_get_content(struct storage *s, const char *path, size_t max, char **out,
                                   size_t *len)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    if (!*key)
        return REG_ERR_NOT_FOUND;
    struct oss_call c = {.what = "GetObject",
                         .method = "GET",
                         .key = key,
                         .max_body = max,
                         .max_body_set = true,
                         .quiet = true};
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    if (result == REG_OK) {
        *len = r.body.len;
        *out = buf_take(&r.body);
        if (!*out)
            result = REG_ERR_INTERNAL;
    }
    buf_free(&r.body);
    return result;
}

static enum regerr oss_put_content(struct storage *s, const char *path, const void *data,
                                   size_t len)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    char md5[25];
    md5_base64(data, len, md5);
    struct oss_call c = {.what = "PutObject",
                         .method = "PUT",
                         .key = key,
                         .body = data,
                         .body_len = len,
                         .has_body = true};
    add_header(&c, "Content-Type", "application/octet-stream");
    add_header(&c, "Content-MD5", md5);
    add_sse(o, &c);
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    buf_free(&r.body);
    return result;
}

/* HEAD of key: its size, mtime and ETag. REG_ERR_NOT_FOUND quietly. */
static enum regerr head_object(struct oss_storage *o, const char *key, uint64_t *size,
                               time_t *mtime, char *etag, size_t etag_cap)
{
    struct oss_call c = {.what = "HeadObject", .method = "HEAD", .key = key, .quiet = true};
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    if (result == REG_OK) {
        *size = r.content_length;
        if (mtime)
            *mtime = r.mtime;
        if (etag)
            snprintf(etag, etag_cap, "%s", r.etag);
    }
    buf_free(&r.body);
    return result;
}

/*
 * One ListObjectsV2 page under prefix (delimiter '/' when delim), continuing after token
 * (NULL for the first page).
 */
static enum regerr list_page(struct oss_storage *o, const char *prefix, bool delim,
                             const char *token, unsigned max_keys, struct ossxml_list *page)
{
    char mk[16];
    snprintf(mk, sizeof(mk), "%u", max_keys);
    struct oss_call c = {.what = "ListObjectsV2", .method = "GET", .key = ""};
    add_query(&c, "list-type", "2");
    add_query(&c, "encoding-type", "url");
    add_query(&c, "max-keys", mk);
    if (*prefix)
        add_query(&c, "prefix", prefix);
    if (delim)
        add_query(&c, "delimiter", "/");
    if (token)
        add_query(&c, "continuation-token", token);
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    if (result == REG_OK && ossxml_parse_list(buf_cstr(&r.body), r.body.len, page) != 0) {
        log_error("oss: ListObjectsV2 %s: malformed answer (request id %s)", prefix,
                  r.request_id[0] ? r.request_id : "-");
        result = REG_ERR_INTERNAL;
    }
    buf_free(&r.body);
    return result;
}

/* Whether any key starts with prefix. */
static enum regerr prefix_exists(struct oss_storage *o, const char *prefix, bool *exists)
{
    struct ossxml_list page;
    enum regerr result = list_page(o, prefix, false, NULL, 1, &page);
    if (result == REG_OK) {
        *exists = page.nkeys > 0 || page.nprefixes > 0;
        ossxml_list_free(&page);
    }
    return result;
}

static enum regerr oss_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    char prefix[OSS_KEY_MAX + 3];
    enum regerr result;
    memset(out, 0, sizeof(*out));
    if (*key) {
        result = head_object(o, key, &out->size, &out->mtime, NULL, 0);
        if (result != REG_ERR_NOT_FOUND)
            return result;
    }
    dir_prefix(key, prefix, sizeof(prefix));
    bool exists = false;
    result = prefix_exists(o, prefix, &exists);
    if (result != REG_OK)
        return result;
    /* The root always exists (as the filesystem driver's root directory does). */
    if (!exists && strcmp(path, "/") != 0)
        return REG_ERR_NOT_FOUND;
    out->is_dir = true;
    return REG_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends a copy of name[0..n) to l (growing *cap). */
static bool list_add(struct storage_list *l, size_t *cap, const char *name, size_t n)
{
    /* bounded by the bucket's keys under one prefix */
    if (buf_grow_items(&l->names, cap, l->n + 1, sizeof(*l->names),
                       BUF_UNCAPPED / sizeof(*l->names)) != BUF_OK)
        return false;
    l->names[l->n] = strndup(name, n);
    if (!l->names[l->n])
        return false;
    l->n++;
    return true;
}

static enum regerr oss_list(struct storage *s, const char *path, struct storage_list *out)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    char prefix[OSS_KEY_MAX + 3];
    dir_prefix(key, prefix, sizeof(prefix));
    size_t plen = strlen(prefix);
    struct storage_list l = {0};
    size_t cap = 0;
    char *token = NULL;
    enum regerr result = REG_OK;
    bool any = false;
    do {
        struct ossxml_list page;
        result = list_page(o, prefix, true, token, o->list_max, &page);
        free(token);
        token = NULL;
        if (result != REG_OK)
            break;
        for (size_t i = 0; i < page.nkeys && result == REG_OK; i++) {
            const char *k = page.keys[i];
            if (strncmp(k, prefix, plen) != 0)
                continue;
            any = true;
            /* "dir/" itself (a directory marker object) is no entry */
            if (k[plen] && !list_add(&l, &cap, k + plen, strlen(k + plen)))
                result = REG_ERR_INTERNAL;
        }
        for (size_t i = 0; i < page.nprefixes && result == REG_OK; i++) {
            const char *p = page.prefixes[i];
            size_t n = strlen(p);
            if (strncmp(p, prefix, plen) != 0 || n <= plen + 1)
                continue;
            any = true;
            if (!list_add(&l, &cap, p + plen, n - plen - 1))
                result = REG_ERR_INTERNAL;
        }
        if (result == REG_OK && page.truncated) {
            if (!page.next || !*page.next) {
                log_error("oss: ListObjectsV2 %s: truncated without a continuation token", prefix);
                result = REG_ERR_INTERNAL;
            } else {
                token = page.next;
                page.next = NULL;
            }
        }
        ossxml_list_free(&page);
    } while (result == REG_OK && token);
    free(token);
    if (result == REG_OK && !any && strcmp(path, "/") != 0)
        result = REG_ERR_NOT_FOUND;
    if (result == REG_OK && l.n) {
        qsort(l.names, l.n, sizeof(*l.names), cmp_str);
        /* a name that is both an object and a prefix ("a" and "a/b") is listed once */
        size_t w = 1;
        for (size_t i = 1; i < l.n; i++) {
            if (strcmp(l.names[i], l.names[w - 1]) == 0)
                free(l.names[i]);
            else
                l.names[w++] = l.names[i];
        }
        l.n = w;
    }
    if (result == REG_OK) {
        *out = l;
        l = (struct storage_list){0};
    }
    storage_list_free(&l);
    return result;
}

/* "/bucket/<encoded key>" for x-oss-copy-source. */
static char *copy_source(const struct oss_storage *o, const char *key)
{
    char *ek = osssign_uri_encode(key, 1);
    if (!ek)
        return NULL;
    size_t n = strlen(o->bucket) + strlen(ek) + 3;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "/%s/%s", o->bucket, ek);
    free(ek);
    return s;
}

/* ---- multipart ---- */

struct multipart {
    char upload_id[256];
    char (*etags)[80];
    size_t nparts, cap;
};

static enum regerr mp_initiate(struct oss_storage *o, const char *key, struct multipart *mp)
{
    struct oss_call c = {
        .what = "InitiateMultipartUpload", .method = "POST", .key = key, .has_body = true};
    add_query(&c, "uploads", "");
    add_header(&c, "Content-Type", "application/octet-stream");
    add_sse(o, &c);
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    if (result == REG_OK &&
        (ossxml_find(buf_cstr(&r.body), r.body.len, "InitiateMultipartUploadResult/UploadId",
                     mp->upload_id, sizeof(mp->upload_id)) != 0 ||
         !mp->upload_id[0])) {
        log_error("oss: InitiateMultipartUpload %s: no UploadId in the answer", key);
        result = REG_ERR_INTERNAL;
    }
    buf_free(&r.body);
    return result;
}

static bool mp_add(struct multipart *mp, const char *etag)
{
    if (buf_grow_items(&mp->etags, &mp->cap, mp->nparts + 1, sizeof(*mp->etags), OSS_MAX_PARTS) !=
        BUF_OK)
        return false;
    snprintf(mp->etags[mp->nparts++], 80, "%s", etag);
    return true;
}

/* Uploads part nparts+1: data, or (src_key != NULL) bytes [off, off+len) of src_key. */
static enum regerr mp_part(struct oss_storage *o, const char *key, struct multipart *mp,
                           const void *data, size_t len, const char *src_key, uint64_t off,
                           uint64_t clen)
{
    if (mp->nparts >= OSS_MAX_PARTS) {
        log_error("oss: %s: over %d parts (raise chunksize)", key, OSS_MAX_PARTS);
        return REG_ERR_TOO_LARGE;
    }
    char num[16], md5[25], range[64];
    char *src = NULL;
    snprintf(num, sizeof(num), "%zu", mp->nparts + 1);
    struct oss_call c = {.what = src_key ? "UploadPartCopy" : "UploadPart",
                         .method = "PUT",
                         .key = key,
                         .body = data,
                         .body_len = len,
                         .has_body = true};
    add_query(&c, "partNumber", num);
    add_query(&c, "uploadId", mp->upload_id);
    if (src_key) {
        src = copy_source(o, src_key);
        if (!src)
            return REG_ERR_INTERNAL;
        snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, off, off + clen - 1);
        add_header(&c, "Content-Type", "application/octet-stream");
        add_header(&c, "x-oss-copy-source", src);
        add_header(&c, "x-oss-copy-source-range", range);
    } else {
        md5_base64(data, len, md5);
        add_header(&c, "Content-Type", "application/octet-stream");
        add_header(&c, "Content-MD5", md5);
    }
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    char etag[80];
    snprintf(etag, sizeof(etag), "%s", r.etag);
    if (result == REG_OK && !etag[0] && r.body.p)
        ossxml_find(r.body.p, r.body.len, "CopyPartResult/ETag", etag, sizeof(etag));
    if (result == REG_OK && !etag[0]) {
        log_error("oss: %s %s: no ETag in the answer", c.what, key);
        result = REG_ERR_INTERNAL;
    }
    if (result == REG_OK && !mp_add(mp, etag))
        result = REG_ERR_INTERNAL;
    buf_free(&r.body);
    free(src);
    return result;
}

/* Appends s to the buffer with XML escaping. */
static bool xml_append(struct buf *b, const char *s)
{
    for (; *s; s++) {
        const char *rep;
        char one[2] = {*s, '\0'};
        switch (*s) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        default:
            rep = one;
        }
        if (buf_append_str(b, rep) != BUF_OK)
            return false;
    }
    return true;
}

static enum regerr mp_complete(struct oss_storage *o, const char *key, struct multipart *mp)
{
    /* bounded by construction: at most OSS_MAX_PARTS parts of one ETag each */
    struct buf xml = BUF_INIT(BUF_UNCAPPED);
    bool ok = buf_append_str(&xml, "<CompleteMultipartUpload>") == BUF_OK;
    for (size_t i = 0; ok && i < mp->nparts; i++)
        ok = buf_printf(&xml, "<Part><PartNumber>%zu</PartNumber><ETag>", i + 1) == BUF_OK &&
             xml_append(&xml, mp->etags[i]) && buf_append_str(&xml, "</ETag></Part>") == BUF_OK;
    ok = ok && buf_append_str(&xml, "</CompleteMultipartUpload>") == BUF_OK;
    if (!ok) {
        buf_free(&xml);
        return REG_ERR_INTERNAL;
    }
    char md5[25];
    md5_base64(xml.p, xml.len, md5);
    struct oss_call c = {.what = "CompleteMultipartUpload",
                         .method = "POST",
                         .key = key,
                         .body = xml.p,
                         .body_len = xml.len,
                         .has_body = true};
    add_query(&c, "uploadId", mp->upload_id);
    add_header(&c, "Content-Type", "application/xml");
    add_header(&c, "Content-MD5", md5);
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    buf_free(&r.body);
    buf_free(&xml);
    return result;
}

static void mp_abort(struct oss_storage *o, const char *key, struct multipart *mp)
{
    if (!mp->upload_id[0])
        return;
    struct oss_call c = {
        .what = "AbortMultipartUpload", .method = "DELETE", .key = key, .quiet = true};
    add_query(&c, "uploadId", mp->upload_id);
    struct oss_resp r = {0};
    call(o, &c, &r);
    buf_free(&r.body);
    mp->upload_id[0] = '\0';
}

static void mp_free(struct multipart *mp)
{
    free(mp->etags);
    memset(mp, 0, sizeof(*mp));
}

/*
 * Copies [0, size) of src_key into the upload as parts of about part_max bytes: every part
 * at least part_max / 2 (so none is under OSS's minimum when part_max >= 200 KiB).
 */
static enum regerr mp_copy_parts(struct oss_storage *o, const char *key, struct multipart *mp,
                                 const char *src_key, uint64_t size, uint64_t part_max)
{
    uint64_t n = (size + part_max - 1) / part_max;
    uint64_t each = (size + n - 1) / n;
    enum regerr result = REG_OK;
    for (uint64_t off = 0; off < size && result == REG_OK; off += each) {
        uint64_t len = size - off < each ? size - off : each;
        result = mp_part(o, key, mp, NULL, 0, src_key, off, len);
    }
    return result;
}

/* The UploadPartCopy part size for a source: at least 2 chunks, at most OSS_MAX_PART. */
static uint64_t copy_part_size(const struct oss_storage *o, uint64_t size)
{
    uint64_t part = o->copy_limit;
    if (part < 2 * o->chunksize)
        part = 2 * o->chunksize;
    if (part < 2 * OSS_MIN_PART)
        part = 2 * OSS_MIN_PART;
    if (size / OSS_MAX_PARTS + 1 > part)
        part = size / OSS_MAX_PARTS + 1;
    return part > OSS_MAX_PART ? OSS_MAX_PART : part;
}

static enum regerr oss_move(struct storage *s, const char *src, const char *dst)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, src, skey);
    OSS_KEY(o, dst, dkey);
    uint64_t size = 0;
    if (!*skey || !*dkey)
        return REG_ERR_NOT_FOUND;
    enum regerr result = head_object(o, skey, &size, NULL, NULL, 0);
    if (result != REG_OK || strcmp(skey, dkey) == 0)
        return result;
    if (size <= o->copy_limit) {
        char *source = copy_source(o, skey);
        if (!source)
            return REG_ERR_INTERNAL;
        struct oss_call c = {.what = "CopyObject", .method = "PUT", .key = dkey, .has_body = true};
        add_header(&c, "Content-Type", "application/octet-stream");
        add_header(&c, "x-oss-copy-source", source);
        add_sse(o, &c);
        struct oss_resp r = {0};
        result = call(o, &c, &r);
        buf_free(&r.body);
        free(source);
    } else {
        struct multipart mp = {0};
        result = mp_initiate(o, dkey, &mp);
        if (result == REG_OK)
            result = mp_copy_parts(o, dkey, &mp, skey, size, copy_part_size(o, size));
        if (result == REG_OK)
            result = mp_complete(o, dkey, &mp);
        if (result != REG_OK)
            mp_abort(o, dkey, &mp);
        mp_free(&mp);
    }
    if (result != REG_OK)
        return result;
    struct oss_call d = {.what = "DeleteObject", .method = "DELETE", .key = skey};
    struct oss_resp r = {0};
    result = call(o, &d, &r);
    buf_free(&r.body);
    return result;
}

/* DeleteMultipleObjects of keys[0..n) (n <= delete_max), quiet mode. */
static enum regerr delete_batch(struct oss_storage *o, char *const *keys, size_t n)
{
    /* bounded by construction: at most delete_max keys of at most OSS_KEY_MAX bytes */
    struct buf xml = BUF_INIT(BUF_UNCAPPED);
    bool ok = buf_append_str(&xml, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete>"
                                   "<Quiet>true</Quiet>") == BUF_OK;
    for (size_t i = 0; ok && i < n; i++) {
        /* encoding-type=url: keys travel URL-encoded, whatever bytes they hold */
        char *ek = osssign_uri_encode(keys[i], 1);
        ok = ek && buf_printf(&xml, "<Object><Key>%s</Key></Object>", ek) == BUF_OK;
        free(ek);
    }
    ok = ok && buf_append_str(&xml, "</Delete>") == BUF_OK;
    if (!ok) {
        buf_free(&xml);
        return REG_ERR_INTERNAL;
    }
    char md5[25];
    md5_base64(xml.p, xml.len, md5);
    struct oss_call c = {.what = "DeleteMultipleObjects",
                         .method = "POST",
                         .key = "",
                         .body = xml.p,
                         .body_len = xml.len,
                         .has_body = true};
    add_query(&c, "delete", "");
    add_query(&c, "encoding-type", "url");
    add_header(&c, "Content-Type", "application/xml");
    add_header(&c, "Content-MD5", md5);
    struct oss_resp r = {0};
    enum regerr result = call(o, &c, &r);
    buf_free(&r.body);
    buf_free(&xml);
    return result;
}

static enum regerr oss_remove(struct storage *s, const char *path)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    char prefix[OSS_KEY_MAX + 3];
    bool any = false;
    enum regerr result = REG_OK;
    if (*key) {
        uint64_t size;
        result = head_object(o, key, &size, NULL, NULL, 0);
        if (result == REG_OK) {
            struct oss_call c = {.what = "DeleteObject", .method = "DELETE", .key = key};
            struct oss_resp r = {0};
            result = call(o, &c, &r);
            buf_free(&r.body);
            any = true;
        }
        if (result != REG_OK && result != REG_ERR_NOT_FOUND)
            return result;
    }
    /* Everything under key/: page by page, each page deleted in batches. */
    dir_prefix(key, prefix, sizeof(prefix));
    unsigned page_max = o->list_max;
    char *token = NULL;
    do {
        struct ossxml_list page;
        result = list_page(o, prefix, false, token, page_max, &page);
        free(token);
        token = NULL;
        if (result != REG_OK)
            break;
        for (size_t i = 0; i < page.nkeys && result == REG_OK; i += o->delete_max) {
            size_t n = page.nkeys - i < o->delete_max ? page.nkeys - i : o->delete_max;
            result = delete_batch(o, page.keys + i, n);
            any = true;
        }
        if (result == REG_OK && page.truncated && page.next && *page.next) {
            token = page.next;
            page.next = NULL;
        }
        ossxml_list_free(&page);
    } while (result == REG_OK && token);
    free(token);
    if (result == REG_OK && !any)
        result = REG_ERR_NOT_FOUND;
    return result;
}

static enum regerr oss_open_read(struct storage *s, const char *path, int *fd, uint64_t *size)
{
    return REG_ERR_UNSUPPORTED; /* no local file: read_range or presign_get */
}

static enum regerr oss_presign_get(struct storage *s, const char *path, long expires_s, char **url)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    if (expires_s < 1 || expires_s > 7 * 24 * 3600) {
        log_error("oss: presign %s: expiry %ld s is outside 1..604800", path, expires_s);
        return REG_ERR_INTERNAL;
    }
    struct osssign_req req = {.method = "GET", .bucket = o->bucket, .key = key};
    time_t now = time(NULL);
    char *q;
    if (o->sigversion == 1) {
        q = osssign_v1_presign_query(&req, o->ak, o->sk, (int64_t)now + expires_s);
    } else {
        char iso[17];
        osssign_iso8601(now, iso);
        q = osssign_v4_presign_query(&req, o->ak, o->sk, o->region, iso, expires_s, NULL, 0);
    }
    char *base = q ? build_url(o, key, NULL, 0) : NULL;
    char *u = NULL;
    if (base) {
        size_t n = strlen(base) + strlen(q) + 2;
        u = malloc(n);
        if (u)
            snprintf(u, n, "%s?%s", base, q);
    }
    free(base);
    free(q);
    if (!u)
        return REG_ERR_INTERNAL;
    *url = u;
    return REG_OK;
}

/* Checks a 206's Content-Range starts at want. */
static bool range_starts_at(const char *cr, uint64_t want)
{
    unsigned long long start;
    return sscanf(cr, "bytes %llu-", &start) == 1 && start == want;
}

static enum regerr oss_read_range(struct storage *s, const char *path, uint64_t off, uint64_t len,
                                  storage_read_cb cb, void *ctx)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    if (!*key)
        return REG_ERR_NOT_FOUND;
    uint64_t done = 0;
    char etag[80] = "";
    enum regerr result = REG_OK;
    for (int attempt = 0;; attempt++) {
        uint64_t from = off + done;
        char range[64];
        struct oss_call c = {.what = "GetObject",
                             .method = "GET",
                             .key = key,
                             .sink = cb,
                             .sink_ctx = ctx,
                             .limit = len ? len - done : 0,
                             .quiet = true};
        if (from > 0 || len) {
            if (len)
                snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, from, off + len - 1);
            else
                snprintf(range, sizeof(range), "bytes=%" PRIu64 "-", from);
            add_header(&c, "Range", range);
            /* OSS ignores a bad range (200, whole object) unless asked to be standard */
            add_header(&c, "x-oss-range-behavior", "standard");
        }
        if (etag[0])
            add_header(&c, "If-Match", etag); /* a resumed read must see the same object */
        struct oss_resp r = {0};
        /* a 200 to a ranged request (whole object): skip to the offset ourselves */
        c.skip = from;
        result = perform(o, &c, &r);
        done += r.delivered;
        if (!etag[0] && r.etag[0])
            snprintf(etag, sizeof(etag), "%s", r.etag);
        if (result == REG_OK && r.status == 206 && !range_starts_at(r.content_range, from)) {
            log_error("oss: GetObject %s: answer range %s, asked from %" PRIu64, key,
                      r.content_range, from);
            result = REG_ERR_INTERNAL;
        } else if (result == REG_OK && r.status != 200 && r.status != 206) {
            result = fail(&c, &r);
        }
        buf_free(&r.body);
        if (result == REG_ERR_UNAVAILABLE && r.delivered > 0 && attempt < o->retries) {
            log_warn("oss: GetObject %s: cut after %" PRIu64 " bytes, resuming", key, done);
            continue;
        }
        break;
    }
    if (result == REG_ERR_RANGE_INVALID && len == 0) {
        /* reading from exactly the end is an empty read */
        uint64_t size = 0;
        if (head_object(o, key, &size, NULL, NULL, 0) == REG_OK && size == off)
            result = REG_OK;
    }
    return result;
}

/* ---- the writer ---- */

struct oss_writer {
    struct storage_writer base;
    struct oss_storage *o;
    char *key;
    struct buf buf;    /* the part being filled, capped at chunksize */
    uint64_t size;     /* bytes the object holds at close */
    bool dirty;        /* close must write (else an append writer that wrote nothing) */
    uint64_t carry;    /* append: the object's bytes, carried over at the first write */
    enum regerr error; /* first failure; close then aborts */
    struct multipart mp;
};

static enum regerr writer_flush_part(struct oss_writer *w)
{
    enum regerr result = REG_OK;
    if (!w->mp.upload_id[0])
        result = mp_initiate(w->o, w->key, &w->mp);
    if (result == REG_OK)
        result = mp_part(w->o, w->key, &w->mp, w->buf.p, w->buf.len, NULL, 0, 0);
    if (result == REG_OK)
        buf_clear(&w->buf);
    return result;
}

/*
 * Append, at the first write: the object's current bytes (w->carry of them) come first. A
 * small object (up to chunksize) is read into the buffer; a larger one becomes the upload's
 * first parts by UploadPartCopy, so no byte of it travels through here. The object itself
 * changes only at close, and an append writer that writes nothing starts no upload at all.
 */
static enum regerr writer_carry(struct oss_writer *w)
{
    struct oss_storage *o = w->o;
    uint64_t size = w->carry;
    enum regerr result;
    if (size <= o->chunksize) {
        struct oss_call c = {.what = "GetObject",
                             .method = "GET",
                             .key = w->key,
                             .max_body = (size_t)o->chunksize,
                             .max_body_set = true};
        struct oss_resp r = {0};
        result = call(o, &c, &r);
        if (result == REG_OK) {
            /* the answer becomes the part buffer (capped at chunksize as well: max_body) */
            w->buf = r.body;
            w->size = w->buf.len;
            r.body = BUF_INIT(0);
            if (w->buf.len != size)
                result = REG_ERR_INTERNAL; /* changed under us: the upload would be wrong */
        }
        buf_free(&r.body);
        return result;
    }
    result = mp_initiate(o, w->key, &w->mp);
    if (result == REG_OK)
        result = mp_copy_parts(o, w->key, &w->mp, w->key, size, copy_part_size(o, size));
    if (result != REG_OK)
        mp_abort(o, w->key, &w->mp);
    return result;
}

static enum regerr oss_writer_write(struct storage_writer *base, const void *data, size_t len)
{
    struct oss_writer *w = (struct oss_writer *)base;
    const char *p = data;
    if (w->error)
        return w->error;
    if (len && w->carry) {
        enum regerr result = writer_carry(w);
        w->carry = 0;
        if (result != REG_OK) {
            w->error = result;
            return result;
        }
    }
    if (len)
        w->dirty = true;
    while (len > 0) {
        size_t chunk = (size_t)w->o->chunksize;
        if (w->buf.len == chunk) {
            enum regerr result = writer_flush_part(w);
            if (result != REG_OK) {
                w->error = result;
                return result;
            }
        }
        size_t n = chunk - w->buf.len < len ? chunk - w->buf.len : len;
        /* grows by doubling up to chunksize: small writers stay small */
        if (buf_append(&w->buf, p, n) != BUF_OK) {
            w->error = REG_ERR_INTERNAL;
            return w->error;
        }
        w->size += n;
        p += n;
        len -= n;
    }
    return REG_OK;
}

static uint64_t oss_writer_size(const struct storage_writer *base)
{
    return ((const struct oss_writer *)base)->size;
}

static void oss_writer_free(struct oss_writer *w)
{
    mp_free(&w->mp);
    buf_free(&w->buf);
    free(w->key);
    free(w);
}

static enum regerr oss_writer_close(struct storage_writer *base)
{
    struct oss_writer *w = (struct oss_writer *)base;
    struct oss_storage *o = w->o;
    enum regerr result = w->error;
    if (result == REG_OK && w->dirty) {
        if (!w->mp.upload_id[0]) {
            /* everything fits one request */
            char md5[25];
            md5_base64(buf_cstr(&w->buf), w->buf.len, md5);
            struct oss_call c = {.what = "PutObject",
                                 .method = "PUT",
                                 .key = w->key,
                                 .body = w->buf.p,
                                 .body_len = w->buf.len,
                                 .has_body = true};
            add_header(&c, "Content-Type", "application/octet-stream");
            add_header(&c, "Content-MD5", md5);
            add_sse(o, &c);
            struct oss_resp r = {0};
            result = call(o, &c, &r);
            buf_free(&r.body);
        } else {
            if (w->buf.len > 0)
                result = writer_flush_part(w);
            if (result == REG_OK)
                result = mp_complete(o, w->key, &w->mp);
        }
    }
    if (result != REG_OK)
        mp_abort(o, w->key, &w->mp);
    oss_writer_free(w);
    return result;
}

static const struct storage_writer_ops oss_writer_ops = {
    .write = oss_writer_write,
    .size = oss_writer_size,
    .close = oss_writer_close,
};

static enum regerr oss_open_writer(struct storage *s, const char *path, bool append,
                                   struct storage_writer **out)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    if (!*key)
        return REG_ERR_INTERNAL;
    struct oss_writer *w = calloc(1, sizeof(*w));
    if (!w || !(w->key = strdup(key))) {
        free(w);
        return REG_ERR_INTERNAL;
    }
    w->base.ops = &oss_writer_ops;
    w->o = o;
    w->buf = BUF_INIT((size_t)o->chunksize);
    w->dirty = !append; /* truncate: close writes even when nothing was written */
    enum regerr result = REG_OK;
    if (append) {
        uint64_t size = 0;
        result = head_object(o, w->key, &size, NULL, NULL, 0);
        if (result == REG_ERR_NOT_FOUND) {
            w->dirty = true; /* as O_CREAT: close creates it, empty if nothing was written */
            result = REG_OK;
        } else if (result == REG_OK) {
            w->carry = size;
            w->size = size;
        }
    }
    if (result != REG_OK) {
        oss_writer_free(w);
        return result;
    }
    *out = &w->base;
    return REG_OK;
}

/* ---- construction ---- */

static void oss_free(struct storage *s)
{
    struct oss_storage *o = (struct oss_storage *)s;
    if (!o)
        return;
    for (size_t i = 0; i < o->npool; i++)
        curl_easy_cleanup(o->pool[i]);
    if (o->share)
        curl_share_cleanup(o->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&o->share_locks[i]);
    pthread_mutex_destroy(&o->pool_lock);
    if (o->sk)
        OPENSSL_cleanse(o->sk, strlen(o->sk));
    free(o->ak);
    free(o->sk);
    free(o->bucket);
    free(o->region);
    free(o->scheme);
    free(o->host);
    free(o->root);
    free(o->kms_key);
    free(o);
    curl_global_cleanup();
}

static const struct storage_ops oss_ops = {
    .name = "oss",
    .get_content = oss_get_content,
    .put_content = oss_put_content,
    .stat = oss_stat,
    .list = oss_list,
    .move = oss_move,
    .remove = oss_remove,
    .open_read = oss_open_read,
    .open_writer = oss_open_writer,
    .presign_get = oss_presign_get,
    .read_range = oss_read_range,
    .free = oss_free,
};

/* The signing region from an endpoint "oss-<region>[-internal].aliyuncs.com[:port]". */
static char *region_from_endpoint(const char *host)
{
    if (strncmp(host, "oss-", 4) != 0)
        return NULL;
    const char *dot = strchr(host, '.');
    if (!dot || strncmp(dot, ".aliyuncs.com", 13) != 0)
        return NULL;
    size_t n = (size_t)(dot - host - 4);
    if (n > 9 && strncmp(dot - 9, "-internal", 9) == 0)
        n -= 9;
    return n ? strndup(host + 4, n) : NULL;
}

/* Fills scheme, host and region from the config; -1 (logged) when they cannot be had. */
static int setup_endpoint(struct oss_storage *o, const struct storage_oss_config *cfg)
{
    const char *region = cfg->region && *cfg->region ? cfg->region : NULL;
    const char *bare = region && strncmp(region, "oss-", 4) == 0 ? region + 4 : region;
    char ep[512];
    bool secure = cfg->secure;
    if (cfg->endpoint && *cfg->endpoint) {
        const char *e = cfg->endpoint;
        if (strncasecmp(e, "https://", 8) == 0) {
            secure = true;
            e += 8;
        } else if (strncasecmp(e, "http://", 7) == 0) {
            secure = false;
            e += 7;
        }
        snprintf(ep, sizeof(ep), "%s", e);
        size_t n = strlen(ep);
        while (n > 0 && ep[n - 1] == '/')
            ep[--n] = '\0';
    } else if (bare) {
        snprintf(ep, sizeof(ep), "oss-%s%s.aliyuncs.com", bare, cfg->internal ? "-internal" : "");
    } else {
        log_error("storage.oss: neither region nor endpoint is set");
        return -1;
    }
    if (!*ep || strpbrk(ep, "/?#@ ")) {
        log_error("storage.oss.endpoint: %s is not a host[:port]", ep);
        return -1;
    }
    size_t blen = strlen(o->bucket);
    bool custom = cfg->cname || (strncasecmp(ep, o->bucket, blen) == 0 && ep[blen] == '.');
    char host[600];
    if (custom)
        snprintf(host, sizeof(host), "%s", ep);
    else
        snprintf(host, sizeof(host), "%s.%s", o->bucket, ep);
    o->host = strdup(host);
    o->scheme = strdup(secure ? "https" : "http");
    o->region = bare ? strdup(bare) : region_from_endpoint(ep);
    if (!o->region && cfg->sigversion != 1) {
        log_error("storage.oss: signature V4 needs the region (set storage.oss.region)");
        return -1;
    }
    if (!o->region)
        o->region = strdup("");
    return o->host && o->scheme && o->region ? 0 : -1;
}

struct storage *storage_oss_new(const struct storage_oss_config *cfg)
{
    if (!cfg->accesskeyid || !*cfg->accesskeyid || !cfg->accesskeysecret ||
        !*cfg->accesskeysecret) {
        log_error("storage.oss: accesskeyid and accesskeysecret are required");
        return NULL;
    }
    if (!cfg->bucket || !*cfg->bucket || strpbrk(cfg->bucket, "./:@ ")) {
        log_error("storage.oss.bucket: a bucket name is required (no '.', '/', ':')");
        return NULL;
    }
    if (cfg->sigversion != 0 && cfg->sigversion != 1 && cfg->sigversion != 4) {
        log_error("storage.oss: signature version %d (1 or 4)", cfg->sigversion);
        return NULL;
    }
    uint64_t chunk = cfg->chunksize ? cfg->chunksize : 10 * MIB;
    if (chunk < OSS_MIN_PART || chunk > OSS_MAX_PART) {
        log_error("storage.oss.chunksize: %" PRIu64 " is outside 100 KiB .. 5 GiB", chunk);
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("storage.oss: curl_global_init failed");
        return NULL;
    }
    struct oss_storage *o = calloc(1, sizeof(*o));
    if (!o) {
        curl_global_cleanup();
        return NULL;
    }
    o->base.ops = &oss_ops;
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&o->share_locks[i], NULL);
    pthread_mutex_init(&o->pool_lock, NULL);
    o->ak = xstrdup(cfg->accesskeyid);
    o->sk = xstrdup(cfg->accesskeysecret);
    o->bucket = xstrdup(cfg->bucket);
    o->kms_key = xstrdup(cfg->encryptionkeyid);
    o->encrypt = cfg->encrypt;
    o->sigversion = cfg->sigversion == 1 ? 1 : 4;
    o->chunksize = chunk;
    o->copy_limit = cfg->copy_limit ? cfg->copy_limit : 1 * GIB;
    o->list_max = cfg->list_max && cfg->list_max <= 1000 ? cfg->list_max : 1000;
    o->delete_max = cfg->delete_max && cfg->delete_max <= 1000 ? cfg->delete_max : 1000;
    o->retries = cfg->retries < 0 ? 0 : (cfg->retries ? cfg->retries : 4);
    o->retry_base_ms = cfg->retry_base_ms > 0 ? cfg->retry_base_ms : 100;
    o->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 10000;
    o->low_speed_time_s = cfg->low_speed_time_s > 0 ? cfg->low_speed_time_s : 60;
    /* rootdirectory without its leading and trailing slashes */
    const char *root = cfg->rootdirectory ? cfg->rootdirectory : "";
    while (*root == '/')
        root++;
    o->root = strdup(root);
    if (o->root) {
        size_t n = strlen(o->root);
        while (n > 0 && o->root[n - 1] == '/')
            o->root[--n] = '\0';
    }
    if (!o->ak || !o->sk || !o->bucket || !o->kms_key || !o->root || setup_endpoint(o, cfg) != 0)
        goto fail;
    o->share = curl_share_init();
    if (!o->share)
        goto fail;
    curl_share_setopt(o->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(o->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(o->share, CURLSHOPT_USERDATA, o);
    curl_share_setopt(o->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_share_setopt(o->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    log_info("storage: oss bucket %s at %s://%s (signature V%d%s%s)", o->bucket, o->scheme, o->host,
             o->sigversion, *o->root ? ", root " : "", o->root);
    return &o->base;
fail:
    oss_free(&o->base);
    return NULL;
}
