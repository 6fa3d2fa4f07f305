/*
 * The OSS driver's HTTP layer: one request on a pooled curl easy handle, signed afresh on
 * every attempt and retried with backoff; its answer's status, headers and capped body.
 */
#include "oss_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "log.h"
#include "ossxml.h"

/* ---- the handle pool ---- */

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

static void resp_reset(struct oss_resp *r)
{
    buf_free(&r->body);
    const struct oss_call *c = r->call;
    memset(r, 0, sizeof(*r));
    r->call = c;
}

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
char *oss_build_url(const struct oss_storage *o, const char *key, const struct osssign_kv *q,
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
    char *url = oss_build_url(o, c->key, c->query, c->nquery);
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
enum regerr oss_perform(struct oss_storage *o, const struct oss_call *c, struct oss_resp *r)
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
enum regerr oss_fail(const struct oss_call *c, const struct oss_resp *r)
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

/* oss_perform() and then 2xx -> REG_OK, else oss_fail(). */
enum regerr oss_call(struct oss_storage *o, const struct oss_call *c, struct oss_resp *r)
{
    enum regerr result = oss_perform(o, c, r);
    if (result != REG_OK)
        return result;
    if (r->status < 200 || r->status >= 300)
        return oss_fail(c, r);
    return REG_OK;
}

void oss_add_header(struct oss_call *c, const char *name, const char *value)
{
    if (c->nheaders < OSS_HEADERS_MAX)
        c->headers[c->nheaders++] = (struct osssign_kv){name, value};
}

void oss_add_query(struct oss_call *c, const char *name, const char *value)
{
    if (c->nquery < OSS_QUERY_MAX)
        c->query[c->nquery++] = (struct osssign_kv){name, value};
}

/* Server-side encryption headers for objects this driver creates. */
void oss_add_sse(const struct oss_storage *o, struct oss_call *c)
{
    if (!o->encrypt)
        return;
    if (*o->kms_key) {
        oss_add_header(c, "x-oss-server-side-encryption", "KMS");
        oss_add_header(c, "x-oss-server-side-encryption-key-id", o->kms_key);
    } else {
        oss_add_header(c, "x-oss-server-side-encryption", "AES256");
    }
}

void oss_md5_base64(const void *data, size_t len, char out[25])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_Digest(data, len, md, &n, EVP_md5(), NULL);
    EVP_EncodeBlock((unsigned char *)out, md, (int)n);
}
