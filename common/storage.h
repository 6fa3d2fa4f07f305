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

struct storage_ops {
    const char *name;
    enum regerr (*get_content)(struct storage *s, const char *path, size_t max, char **out,
                               size_t *len);
    enum regerr (*put_content)(struct storage *s, const char *path, const void *data,
                               size_t len);
    enum regerr (*stat)(struct storage *s, const char *path, struct storage_stat *out);
    enum regerr (*list)(struct storage *s, const char *path, struct storage_list *out);
    enum regerr (*move)(struct storage *s, const char *src, const char *dst);
    enum regerr (*remove)(struct storage *s, const char *path);
    enum regerr (*open_read)(struct storage *s, const char *path, int *fd, uint64_t *size);
    enum regerr (*open_writer)(struct storage *s, const char *path, bool append,
                               struct storage_writer **out);
    void (*free)(struct storage *s);
};

struct storage {
    const struct storage_ops *ops;
};

/* The filesystem driver rooted at root (created when missing). NULL on error (logged). */
struct storage *storage_fs_new(const char *root);

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
static inline enum regerr storage_put_content(struct storage *s, const char *path,
                                              const void *data, size_t len)
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
static inline void storage_free(struct storage *s)
{
    if (s)
        s->ops->free(s);
}

/* Writer: bytes go to the file as they come; size is what the file holds now. */
enum regerr storage_writer_write(struct storage_writer *w, const void *data, size_t len);
uint64_t storage_writer_size(const struct storage_writer *w);
/* Flushes and closes; w is freed whatever the result. */
enum regerr storage_writer_close(struct storage_writer *w);

void storage_list_free(struct storage_list *l);

#endif
