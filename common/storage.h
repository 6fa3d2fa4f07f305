#ifndef REGMIRROR_STORAGE_H
#define REGMIRROR_STORAGE_H
/*
 * storage: the driver interface under the registry, and its constructors.
 *
 * Paths are driver-relative, start with '/', and come from layout.h. Every operation
 * returns REG_OK, REG_ERR_NOT_FOUND when the path does not exist, or REG_ERR_INTERNAL /
 * REG_ERR_UNAVAILABLE on failure (the driver logs the cause once, with the path).
 *
 * The filesystem driver works on local files from the event-loop thread, the way nginx
 * serves files: each call is a few syscalls on the local disk. put_content and move are
 * atomic (write to a temporary name, then rename), so a crash never leaves a partial file
 * at a visible path.
 *
 * The OSS driver (storage/oss.c) makes blocking HTTP requests: the daemon calls it from
 * worker threads, never from the event loop. It is thread-safe (any number of threads may
 * call it at once); one storage_writer is used by one thread at a time.
 *
 * Ownership: strings and arrays returned through out-parameters are malloc'd and belong to
 * the caller (storage_list_free for lists). A storage_writer belongs to the caller until
 * storage_writer_close.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "regerr.h"

struct storage;
struct storage_writer;

struct storage_stat {
    uint64_t size;
    bool is_dir;
    time_t mtime;
};

struct storage_list {
    char **names; /* entry names (not paths), sorted */
    size_t n;
};

/*
 * read_range's sink: called with the bytes in order; a non-zero return stops the transfer
 * (read_range then returns REG_ERR_INTERNAL without logging).
 */
typedef int (*storage_read_cb)(void *ctx, const void *data, size_t len);

struct storage_ops {
    const char *name;
    enum regerr (*get_content)(struct storage *s, const char *path, size_t max, char **out,
                               size_t *len);
    enum regerr (*put_content)(struct storage *s, const char *path, const void *data, size_t len);
    enum regerr (*stat)(struct storage *s, const char *path, struct storage_stat *out);
    enum regerr (*list)(struct storage *s, const char *path, struct storage_list *out);
    enum regerr (*move)(struct storage *s, const char *src, const char *dst);
    enum regerr (*remove)(struct storage *s, const char *path);
    enum regerr (*open_read)(struct storage *s, const char *path, int *fd, uint64_t *size);
    enum regerr (*open_writer)(struct storage *s, const char *path, bool append,
                               struct storage_writer **out);
    /* Optional (NULL: REG_ERR_UNSUPPORTED): a signed URL that GETs path until expires_s. */
    enum regerr (*presign_get)(struct storage *s, const char *path, long expires_s, char **url);
    /* Optional: streams len bytes (0: to the end) of path from offset off into cb. */
    enum regerr (*read_range)(struct storage *s, const char *path, uint64_t off, uint64_t len,
                              storage_read_cb cb, void *ctx);
    void (*free)(struct storage *s);
};

/* A writer: each driver has its own behind these ops (see storage_writer_* below). */
struct storage_writer_ops {
    enum regerr (*write)(struct storage_writer *w, const void *data, size_t len);
    uint64_t (*size)(const struct storage_writer *w);
    enum regerr (*close)(struct storage_writer *w);
    enum regerr (*truncate)(struct storage_writer *w, uint64_t size); /* NULL: not supported */
};

struct storage_writer {
    const struct storage_writer_ops *ops;
};

struct storage {
    const struct storage_ops *ops;
    /* The bytes sit on this host's filesystem: calls are local syscalls, fast enough to run
       on the event loop, and a blob can be sent with sendfile. Wrappers copy their inner's. */
    bool local;
};

static inline bool storage_is_local(const struct storage *s)
{
    return s->local;
}

/* The filesystem driver rooted at root (created when missing). NULL on error (logged). */
struct storage *storage_fs_new(const char *root);

/*
 * The Aliyun OSS driver's settings: registry:2's storage.oss keys, plus tuning knobs
 * (0 = the default) that tests lower to exercise OSS's limits with small objects.
 *
 * Endpoint: `endpoint` when set (host[:port], or a URL whose http:// or https:// scheme then
 * wins over `secure`), else "<region>.aliyuncs.com" ("<region>-internal.aliyuncs.com" with
 * internal), region taken as "oss-<region>" when it lacks the "oss-" prefix. Requests go to
 * the virtual-hosted "<bucket>.<endpoint>", unless the endpoint is the bucket's own custom
 * domain (CNAME): that is the case when the endpoint host already starts with "<bucket>."
 * or when `cname` is set, and the endpoint is then used as is.
 *
 * Signatures: V4 (default) signs for `region` without its "oss-" prefix; without a region it
 * is taken from an endpoint "oss-<region>[-internal].aliyuncs.com", else the constructor
 * fails. sigversion 1 selects the V1 signature (existing buckets that still accept it).
 */
struct storage_oss_config {
    const char *accesskeyid, *accesskeysecret;
    const char *region, *endpoint;
    bool internal;
    const char *bucket;
    bool encrypt;                /* server-side encryption: AES256, or KMS with the key id */
    const char *encryptionkeyid; /* KMS key id (implies KMS when set with encrypt) */
    bool secure;                 /* https (default in config: true) */
    uint64_t chunksize;          /* multipart part size; 0: 10 MiB; at least 100 KiB */
    const char *rootdirectory;   /* key prefix; "" or NULL: the bucket's root */
    bool cname;                  /* the endpoint is the bucket's custom domain */
    int sigversion;              /* 0 or 4: V4; 1: V1 */
    /* Tuning (0: default). */
    uint64_t copy_limit;     /* CopyObject's source limit (1 GiB); above it UploadPartCopy */
    unsigned list_max;       /* max-keys per listing page (1000) */
    unsigned delete_max;     /* keys per DeleteMultipleObjects (1000) */
    int retries;             /* extra attempts on 5xx/connection errors (4; -1: none) */
    long retry_base_ms;      /* first backoff, doubled each time (100 ms) */
    long connect_timeout_ms; /* 10 s */
    long low_speed_time_s;   /* abort after this long under 1 byte/s (60 s) */
};

/*
 * The OSS driver. NULL on a configuration error (logged; the secret never is). The config
 * strings are copied. Uses libcurl easy handles (pooled, sharing connections and DNS).
 */
struct storage *storage_oss_new(const struct storage_oss_config *cfg);

/*
 * Reads the whole file at path, at most max bytes (REG_ERR_TOO_LARGE above that).
 * *out is NUL-terminated for convenience; *len excludes the NUL.
 */
static inline enum regerr storage_get_content(struct storage *s, const char *path, size_t max,
                                              char **out, size_t *len)
{
    return s->ops->get_content(s, path, max, out, len);
}
/* Writes data as the whole content of path, creating parent directories, atomically. */
static inline enum regerr storage_put_content(struct storage *s, const char *path, const void *data,
                                              size_t len)
{
    return s->ops->put_content(s, path, data, len);
}
static inline enum regerr storage_stat(struct storage *s, const char *path,
                                       struct storage_stat *out)
{
    return s->ops->stat(s, path, out);
}
/* Lists the direct children of the directory path. */
static inline enum regerr storage_list(struct storage *s, const char *path,
                                       struct storage_list *out)
{
    return s->ops->list(s, path, out);
}
/* Moves src to dst (replacing dst), creating dst's parents. */
static inline enum regerr storage_move(struct storage *s, const char *src, const char *dst)
{
    return s->ops->move(s, src, dst);
}
/* Removes path, recursively for a directory. */
static inline enum regerr storage_remove(struct storage *s, const char *path)
{
    return s->ops->remove(s, path);
}
/* Opens path for reading: a file descriptor the caller owns (sendfile-able) and its size. */
static inline enum regerr storage_open_read(struct storage *s, const char *path, int *fd,
                                            uint64_t *size)
{
    return s->ops->open_read(s, path, fd, size);
}
/* Opens a writer on path; append continues an existing file, else it is truncated. */
static inline enum regerr storage_open_writer(struct storage *s, const char *path, bool append,
                                              struct storage_writer **out)
{
    return s->ops->open_writer(s, path, append, out);
}
/*
 * A signed, expiring URL for GET of path (the client downloads from the store directly).
 * REG_ERR_UNSUPPORTED for drivers that have none (filesystem). *url is the caller's.
 */
static inline enum regerr storage_presign_get(struct storage *s, const char *path, long expires_s,
                                              char **url)
{
    if (!s->ops->presign_get)
        return REG_ERR_UNSUPPORTED;
    return s->ops->presign_get(s, path, expires_s, url);
}
/*
 * Streams bytes [off, off + len) of path (len 0: to the end) into cb. REG_ERR_RANGE_INVALID
 * when off is past the end (off == size is an empty read). REG_ERR_UNSUPPORTED for drivers
 * without it (filesystem: use open_read).
 */
static inline enum regerr storage_read_range(struct storage *s, const char *path, uint64_t off,
                                             uint64_t len, storage_read_cb cb, void *ctx)
{
    if (!s->ops->read_range)
        return REG_ERR_UNSUPPORTED;
    return s->ops->read_range(s, path, off, len, cb, ctx);
}
static inline void storage_free(struct storage *s)
{
    if (s)
        s->ops->free(s);
}

/*
 * Writer. Filesystem: bytes go to the file as they come; size is what the file holds now.
 * OSS: bytes are buffered up to chunksize and sent as multipart parts; the object (with an
 * appended-to object's earlier bytes) appears, whole, at close; size counts every byte the
 * object will hold. A failed write makes close fail too (and abort the multipart upload).
 */
static inline enum regerr storage_writer_write(struct storage_writer *w, const void *data,
                                               size_t len)
{
    return w->ops->write(w, data, len);
}
static inline uint64_t storage_writer_size(const struct storage_writer *w)
{
    return w->ops->size(w);
}
/*
 * Cuts what w wrote back to size bytes (no more than it holds), freeing the rest: a request
 * that failed half-way leaves what was there before it. REG_ERR_UNSUPPORTED where the
 * driver cannot (OSS sends parts as they fill).
 */
static inline enum regerr storage_writer_truncate(struct storage_writer *w, uint64_t size)
{
    return w->ops->truncate ? w->ops->truncate(w, size) : REG_ERR_UNSUPPORTED;
}
/* Flushes and closes; w is freed whatever the result. */
static inline enum regerr storage_writer_close(struct storage_writer *w)
{
    return w->ops->close(w);
}

void storage_list_free(struct storage_list *l);

#endif
