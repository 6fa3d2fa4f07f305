#ifndef REGMIRROR_OSS_INT_H
#define REGMIRROR_OSS_INT_H
/*
 * What the pieces of the OSS driver share: oss.c (the storage_ops), oss_http.c (one request:
 * pool, signing, retries) and oss_multipart.c (multipart uploads and the writer). Private to
 * common/storage/oss*.c; the rest of regmirror sees only storage_oss_new (storage.h).
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "buf.h"
#include "osssign.h"
#include "regerr.h"
#include "storage.h"

#define OSS_KIB 1024ull
#define OSS_MIB (1024ull * OSS_KIB)
#define OSS_GIB (1024ull * OSS_MIB)

#define OSS_KEY_MAX 1023                /* OSS's limit on a key's bytes */
#define OSS_MAX_PARTS 10000             /* parts per multipart upload */
#define OSS_MIN_PART (100 * OSS_KIB)    /* every part but the last */
#define OSS_MAX_PART (5 * OSS_GIB)      /* one part, and one PutObject */
#define OSS_XML_MAX (8 * OSS_MIB)       /* XML answers kept in memory (a listing page is ~1 MB) */
#define OSS_ERR_BODY_MAX (64 * OSS_KIB) /* error bodies kept (the rest is dropped) */
#define OSS_POOL_MAX 16                 /* idle easy handles kept */
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

/* ---- keys (oss.c) ---- */

int oss_key(const struct oss_storage *o, const char *path, char *buf, size_t cap);

/* Declares char buf[] holding path's key; returns REG_ERR_INTERNAL when it is too long. */
#define OSS_KEY(o, path, buf)                                                                      \
    char buf[OSS_KEY_MAX + 2];                                                                     \
    if (oss_key(o, path, buf, sizeof(buf)) != 0)                                                   \
        return REG_ERR_INTERNAL;

/* ---- the HTTP exchange (oss_http.c) ---- */

/* Sends c, retrying; REG_OK with r holding the final answer, whatever its status. */
enum regerr oss_perform(struct oss_storage *o, const struct oss_call *c, struct oss_resp *r);
/* The error of r, a non-2xx answer to c (logged unless c->quiet and expected). */
enum regerr oss_fail(const struct oss_call *c, const struct oss_resp *r);
/* oss_perform, then a 2xx is REG_OK and anything else oss_fail. */
enum regerr oss_call(struct oss_storage *o, const struct oss_call *c, struct oss_resp *r);
void oss_add_header(struct oss_call *c, const char *name, const char *value);
void oss_add_query(struct oss_call *c, const char *name, const char *value);
void oss_add_sse(const struct oss_storage *o, struct oss_call *c);
void oss_md5_base64(const void *data, size_t len, char out[25]);
char *oss_build_url(const struct oss_storage *o, const char *key, const struct osssign_kv *q,
                    size_t nq);

/* ---- objects (oss.c) ---- */

enum regerr oss_head_object(struct oss_storage *o, const char *key, uint64_t *size, time_t *mtime,
                            char *etag, size_t etag_cap);
char *oss_copy_source(const struct oss_storage *o, const char *key);

/* ---- multipart uploads and the writer (oss_multipart.c) ---- */

struct oss_multipart {
    char upload_id[256];
    char (*etags)[80];
    size_t nparts, cap;
};

enum regerr oss_mp_initiate(struct oss_storage *o, const char *key, struct oss_multipart *mp);
enum regerr oss_mp_complete(struct oss_storage *o, const char *key, struct oss_multipart *mp);
/* Aborts the upload, if one was started; failures are only logged. */
void oss_mp_abort(struct oss_storage *o, const char *key, struct oss_multipart *mp);
void oss_mp_free(struct oss_multipart *mp);
enum regerr oss_mp_copy_parts(struct oss_storage *o, const char *key, struct oss_multipart *mp,
                              const char *src_key, uint64_t size, uint64_t part_max);
uint64_t oss_copy_part_size(const struct oss_storage *o, uint64_t size);
enum regerr oss_open_writer(struct storage *s, const char *path, bool append,
                            struct storage_writer **out);

#endif
