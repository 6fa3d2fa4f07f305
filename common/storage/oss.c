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
 *
 * The pieces: this file (the storage_ops and the construction), oss_http.c (the request
 * layer), oss_multipart.c (multipart uploads and the writer); oss_int.h is what they share.
 */
#include "oss_int.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>

#include "log.h"
#include "osssign.h"
#include "ossxml.h"

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

/* ---- keys ---- */

/* The key of driver path (root + path), into buf. -1 when it is over OSS's limit. */
int oss_key(const struct oss_storage *o, const char *path, char *buf, size_t cap)
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
    enum regerr result = oss_call(o, &c, &r);
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
    oss_md5_base64(data, len, md5);
    struct oss_call c = {.what = "PutObject",
                         .method = "PUT",
                         .key = key,
                         .body = data,
                         .body_len = len,
                         .has_body = true};
    oss_add_header(&c, "Content-Type", "application/octet-stream");
    oss_add_header(&c, "Content-MD5", md5);
    oss_add_sse(o, &c);
    struct oss_resp r = {0};
    enum regerr result = oss_call(o, &c, &r);
    buf_free(&r.body);
    return result;
}

/* HEAD of key: its size, mtime and ETag. REG_ERR_NOT_FOUND quietly. */
enum regerr oss_head_object(struct oss_storage *o, const char *key, uint64_t *size, time_t *mtime,
                            char *etag, size_t etag_cap)
{
    struct oss_call c = {.what = "HeadObject", .method = "HEAD", .key = key, .quiet = true};
    struct oss_resp r = {0};
    enum regerr result = oss_call(o, &c, &r);
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
    oss_add_query(&c, "list-type", "2");
    oss_add_query(&c, "encoding-type", "url");
    oss_add_query(&c, "max-keys", mk);
    if (*prefix)
        oss_add_query(&c, "prefix", prefix);
    if (delim)
        oss_add_query(&c, "delimiter", "/");
    if (token)
        oss_add_query(&c, "continuation-token", token);
    struct oss_resp r = {0};
    enum regerr result = oss_call(o, &c, &r);
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
        result = oss_head_object(o, key, &out->size, &out->mtime, NULL, 0);
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
char *oss_copy_source(const struct oss_storage *o, const char *key)
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

static enum regerr oss_move(struct storage *s, const char *src, const char *dst)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, src, skey);
    OSS_KEY(o, dst, dkey);
    uint64_t size = 0;
    if (!*skey || !*dkey)
        return REG_ERR_NOT_FOUND;
    enum regerr result = oss_head_object(o, skey, &size, NULL, NULL, 0);
    if (result != REG_OK || strcmp(skey, dkey) == 0)
        return result;
    if (size <= o->copy_limit) {
        char *source = oss_copy_source(o, skey);
        if (!source)
            return REG_ERR_INTERNAL;
        struct oss_call c = {.what = "CopyObject", .method = "PUT", .key = dkey, .has_body = true};
        oss_add_header(&c, "Content-Type", "application/octet-stream");
        oss_add_header(&c, "x-oss-copy-source", source);
        oss_add_sse(o, &c);
        struct oss_resp r = {0};
        result = oss_call(o, &c, &r);
        buf_free(&r.body);
        free(source);
    } else {
        struct oss_multipart mp = {0};
        result = oss_mp_initiate(o, dkey, &mp);
        if (result == REG_OK)
            result = oss_mp_copy_parts(o, dkey, &mp, skey, size, oss_copy_part_size(o, size));
        if (result == REG_OK)
            result = oss_mp_complete(o, dkey, &mp);
        if (result != REG_OK)
            oss_mp_abort(o, dkey, &mp);
        oss_mp_free(&mp);
    }
    if (result != REG_OK)
        return result;
    struct oss_call d = {.what = "DeleteObject", .method = "DELETE", .key = skey};
    struct oss_resp r = {0};
    result = oss_call(o, &d, &r);
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
    oss_md5_base64(xml.p, xml.len, md5);
    struct oss_call c = {.what = "DeleteMultipleObjects",
                         .method = "POST",
                         .key = "",
                         .body = xml.p,
                         .body_len = xml.len,
                         .has_body = true};
    oss_add_query(&c, "delete", "");
    oss_add_query(&c, "encoding-type", "url");
    oss_add_header(&c, "Content-Type", "application/xml");
    oss_add_header(&c, "Content-MD5", md5);
    struct oss_resp r = {0};
    enum regerr result = oss_call(o, &c, &r);
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
        result = oss_head_object(o, key, &size, NULL, NULL, 0);
        if (result == REG_OK) {
            struct oss_call c = {.what = "DeleteObject", .method = "DELETE", .key = key};
            struct oss_resp r = {0};
            result = oss_call(o, &c, &r);
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
    char *base = q ? oss_build_url(o, key, NULL, 0) : NULL;
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
            oss_add_header(&c, "Range", range);
            /* OSS ignores a bad range (200, whole object) unless asked to be standard */
            oss_add_header(&c, "x-oss-range-behavior", "standard");
        }
        if (etag[0])
            oss_add_header(&c, "If-Match", etag); /* a resumed read must see the same object */
        struct oss_resp r = {0};
        /* a 200 to a ranged request (whole object): skip to the offset ourselves */
        c.skip = from;
        result = oss_perform(o, &c, &r);
        done += r.delivered;
        if (!etag[0] && r.etag[0])
            snprintf(etag, sizeof(etag), "%s", r.etag);
        if (result == REG_OK && r.status == 206 && !range_starts_at(r.content_range, from)) {
            log_error("oss: GetObject %s: answer range %s, asked from %" PRIu64, key,
                      r.content_range, from);
            result = REG_ERR_INTERNAL;
        } else if (result == REG_OK && r.status != 200 && r.status != 206) {
            result = oss_fail(&c, &r);
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
        if (oss_head_object(o, key, &size, NULL, NULL, 0) == REG_OK && size == off)
            result = REG_OK;
    }
    return result;
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
    uint64_t chunk = cfg->chunksize ? cfg->chunksize : 10 * OSS_MIB;
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
    o->copy_limit = cfg->copy_limit ? cfg->copy_limit : 1 * OSS_GIB;
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
