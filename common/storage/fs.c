/* The filesystem storage driver: distribution's layout under a local root directory. */
#include "storage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"

struct fs_storage {
    struct storage base;
    char *root;
    size_t root_len;
};

struct fs_writer {
    struct storage_writer base;
    int fd;
    uint64_t size;
    char *path; /* for messages */
};

static enum regerr errno_to_regerr(int err)
{
    return (err == ENOENT || err == ENOTDIR) ? REG_ERR_NOT_FOUND : REG_ERR_INTERNAL;
}

static int full_path(struct fs_storage *fs, const char *path, char *buf, size_t size)
{
    size_t n = strlen(path);
    if (fs->root_len + n >= size)
        return -1;
    memcpy(buf, fs->root, fs->root_len);
    memcpy(buf + fs->root_len, path, n + 1);
    return 0;
}

#define FS_PATH(fs, path, buf)                                                                     \
    char buf[PATH_MAX];                                                                            \
    if (full_path(fs, path, buf, sizeof(buf)) != 0) {                                              \
        log_error("storage: path too long: %s", path);                                             \
        return REG_ERR_INTERNAL;                                                                   \
    }

/* mkdir -p of dir, deepest first: where the parent exists (the usual case) that is one mkdir. */
static int mkdir_p(char *dir)
{
    if (mkdir(dir, 0755) == 0 || errno == EEXIST)
        return 0;
    if (errno != ENOENT)
        return -1;
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return -1;
    *slash = '\0';
    int rc = mkdir_p(dir);
    *slash = '/';
    if (rc != 0)
        return -1;
    return (mkdir(dir, 0755) == 0 || errno == EEXIST) ? 0 : -1;
}

/* mkdir -p of the directory part of p (p itself is a file path). */
static int mkdirs_parent(const char *p)
{
    char tmp[PATH_MAX];
    size_t n = strlen(p);
    if (n >= sizeof(tmp))
        return -1;
    memcpy(tmp, p, n + 1);
    char *slash = strrchr(tmp, '/');
    if (!slash || slash == tmp)
        return 0;
    *slash = '\0';
    return mkdir_p(tmp);
}

/* open(p, flags | O_CREAT), creating the missing parent directories only when it must. */
static int open_creating(const char *p, int flags)
{
    int fd = open(p, flags | O_CREAT, 0644);
    if (fd >= 0 || errno != ENOENT)
        return fd;
    if (mkdirs_parent(p) != 0)
        return -1;
    return open(p, flags | O_CREAT, 0644);
}

/* First read size: links (the common case) are about 75 bytes. */
#define FS_CONTENT_FIRST 512

static enum regerr fs_get_content(struct storage *s, const char *path, size_t max, char **out,
                                  size_t *len)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, path, p);
    enum regerr result = REG_OK;
    /* the byte that tells "too big"; no buffer size near SIZE_MAX (cap + 1 must not wrap) */
    size_t limit = max < SIZE_MAX / 8 ? max + 1 : SIZE_MAX / 8;
    struct buf b = BUF_INIT(limit);
    if (buf_reserve(&b, FS_CONTENT_FIRST < limit ? FS_CONTENT_FIRST : limit) != BUF_OK)
        return REG_ERR_INTERNAL;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        buf_free(&b);
        return errno_to_regerr(errno);
    }
    /* Read to the end without an fstat first: one syscall less on the hot path, and the
     * file's size may change under us anyway. One byte past max tells that it is too big:
     * the buffer grows to max + 1, so a file of max bytes still ends with a short read. */
    for (;;) {
        if (b.len == b.cap) {
            if (b.cap > max) {
                result = REG_ERR_TOO_LARGE;
                goto out;
            }
            /* four times the room, up to max + 1 */
            if (buf_reserve(&b, b.cap > limit / 4 ? limit - b.len : b.cap * 3) != BUF_OK) {
                result = REG_ERR_INTERNAL;
                goto out;
            }
        }
        ssize_t r = read(fd, b.p + b.len, b.cap - b.len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            if (errno == EISDIR) {
                result = REG_ERR_NOT_FOUND;
            } else {
                log_error("storage: read %s: %s", p, strerror(errno));
                result = REG_ERR_INTERNAL;
            }
            goto out;
        }
        if (r == 0)
            break;
        buf_commit(&b, (size_t)r);
        /* a regular file reads short only at its end: no second read to see the 0 */
        if (b.len < b.cap)
            break;
    }
    if (b.len > max) {
        result = REG_ERR_TOO_LARGE;
        goto out;
    }
    *len = b.len;
    *out = buf_take(&b);
out:
    buf_free(&b);
    close(fd);
    return result;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *c = data;
    while (len > 0) {
        ssize_t w = write(fd, c, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        c += w;
        len -= (size_t)w;
    }
    return 0;
}

static enum regerr fs_put_content(struct storage *s, const char *path, const void *data, size_t len)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, path, p);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", p, (long)getpid());
    int fd = open_creating(tmp, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) {
        log_error("storage: create %s: %s", tmp, strerror(errno));
        return REG_ERR_INTERNAL;
    }
    if (write_all(fd, data, len) != 0 || close(fd) != 0) {
        log_error("storage: write %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return REG_ERR_INTERNAL;
    }
    if (rename(tmp, p) != 0) {
        log_error("storage: rename %s: %s", p, strerror(errno));
        unlink(tmp);
        return REG_ERR_INTERNAL;
    }
    return REG_OK;
}

static enum regerr fs_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, path, p);
    struct stat st;
    if (stat(p, &st) != 0)
        return errno_to_regerr(errno);
    out->size = (uint64_t)st.st_size;
    out->is_dir = S_ISDIR(st.st_mode);
    out->mtime = st.st_mtime;
    return REG_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static enum regerr fs_list(struct storage *s, const char *path, struct storage_list *out)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, path, p);
    enum regerr result = REG_OK;
    struct storage_list l = {0};
    size_t cap = 0;
    DIR *d = opendir(p);
    if (!d)
        return errno_to_regerr(errno);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        /* Temporary files of an interrupted put_content are not entries. */
        if (strstr(e->d_name, ".tmp."))
            continue;
        /* bounded by the directory */
        if (buf_grow_items(&l.names, &cap, l.n + 1, sizeof(*l.names),
                           BUF_UNCAPPED / sizeof(*l.names)) != BUF_OK) {
            result = REG_ERR_INTERNAL;
            goto out;
        }
        l.names[l.n] = strdup(e->d_name);
        if (!l.names[l.n]) {
            result = REG_ERR_INTERNAL;
            goto out;
        }
        l.n++;
    }
    if (l.n)
        qsort(l.names, l.n, sizeof(*l.names), cmp_str);
    *out = l;
    l = (struct storage_list){0};
out:
    storage_list_free(&l);
    closedir(d);
    return result;
}

static enum regerr fs_move(struct storage *s, const char *src, const char *dst)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, src, ps);
    FS_PATH(fs, dst, pd);
    /* ENOENT: the source is missing, or the destination's directory is yet to be made */
    int rc = rename(ps, pd);
    if (rc != 0 && errno == ENOENT) {
        if (mkdirs_parent(pd) != 0) {
            log_error("storage: mkdir for %s: %s", pd, strerror(errno));
            return REG_ERR_INTERNAL;
        }
        rc = rename(ps, pd);
    }
    if (rc != 0) {
        int err = errno;
        if (err != ENOENT)
            log_error("storage: rename %s -> %s: %s", ps, pd, strerror(err));
        return errno_to_regerr(err);
    }
    return REG_OK;
}

static int remove_tree(int parent, const char *name)
{
    if (unlinkat(parent, name, 0) == 0)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return errno == ENOENT ? 0 : -1;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (remove_tree(dirfd(d), e->d_name) != 0)
            rc = -1;
    }
    closedir(d);
    if (rc == 0 && unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        rc = -1;
    return rc;
}

static enum regerr fs_remove(struct storage *s, const char *path)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, path, p);
    struct stat st;
    if (lstat(p, &st) != 0)
        return errno_to_regerr(errno);
    if (remove_tree(AT_FDCWD, p) != 0) {
        log_error("storage: remove %s: %s", p, strerror(errno));
        return REG_ERR_INTERNAL;
    }
    return REG_OK;
}

static enum regerr fs_open_read(struct storage *s, const char *path, int *fd, uint64_t *size)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, path, p);
    int f = open(p, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return errno_to_regerr(errno);
    struct stat st;
    if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(f);
        return REG_ERR_NOT_FOUND;
    }
    *fd = f;
    *size = (uint64_t)st.st_size;
    return REG_OK;
}

static enum regerr fs_writer_write(struct storage_writer *base, const void *data, size_t len);
static uint64_t fs_writer_size(const struct storage_writer *base);
static enum regerr fs_writer_close(struct storage_writer *base);
static enum regerr fs_writer_truncate(struct storage_writer *base, uint64_t size);

static const struct storage_writer_ops fs_writer_ops = {
    .write = fs_writer_write,
    .size = fs_writer_size,
    .close = fs_writer_close,
    .truncate = fs_writer_truncate,
};

static enum regerr fs_open_writer(struct storage *s, const char *path, bool append,
                                  struct storage_writer **out)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    FS_PATH(fs, path, p);
    int fd = open_creating(p, O_WRONLY | O_CLOEXEC | (append ? O_APPEND : O_TRUNC));
    if (fd < 0) {
        log_error("storage: open %s: %s", p, strerror(errno));
        return REG_ERR_INTERNAL;
    }
    struct stat st;
    struct fs_writer *w = calloc(1, sizeof(*w));
    if (!w || fstat(fd, &st) != 0 || !(w->path = strdup(p))) {
        free(w);
        close(fd);
        return REG_ERR_INTERNAL;
    }
    w->base.ops = &fs_writer_ops;
    w->fd = fd;
    w->size = (uint64_t)st.st_size;
    *out = &w->base;
    return REG_OK;
}

static enum regerr fs_writer_write(struct storage_writer *base, const void *data, size_t len)
{
    struct fs_writer *w = (struct fs_writer *)base;
    if (write_all(w->fd, data, len) != 0) {
        int err = errno;
        log_error("storage: write %s: %s", w->path, strerror(err));
        /* The part of this write that got in goes: the file holds what size says. */
        if (ftruncate(w->fd, (off_t)w->size) != 0)
            log_error("storage: truncate %s: %s", w->path, strerror(errno));
        /* A full disk is a condition to retry after, not a fault of the registry. */
        return err == ENOSPC || err == EDQUOT ? REG_ERR_UNAVAILABLE : REG_ERR_INTERNAL;
    }
    w->size += len;
    return REG_OK;
}

static enum regerr fs_writer_truncate(struct storage_writer *base, uint64_t size)
{
    struct fs_writer *w = (struct fs_writer *)base;
    if (size > w->size)
        return REG_ERR_INTERNAL;
    if (ftruncate(w->fd, (off_t)size) != 0) {
        log_error("storage: truncate %s: %s", w->path, strerror(errno));
        return REG_ERR_INTERNAL;
    }
    w->size = size;
    return REG_OK;
}

static uint64_t fs_writer_size(const struct storage_writer *base)
{
    return ((const struct fs_writer *)base)->size;
}

static enum regerr fs_writer_close(struct storage_writer *base)
{
    struct fs_writer *w = (struct fs_writer *)base;
    enum regerr result = REG_OK;
    if (close(w->fd) != 0) {
        log_error("storage: close %s: %s", w->path, strerror(errno));
        result = REG_ERR_INTERNAL;
    }
    free(w->path);
    free(w);
    return result;
}

static void fs_free(struct storage *s)
{
    struct fs_storage *fs = (struct fs_storage *)s;
    free(fs->root);
    free(fs);
}

static const struct storage_ops fs_ops = {
    .name = "filesystem",
    .get_content = fs_get_content,
    .put_content = fs_put_content,
    .stat = fs_stat,
    .list = fs_list,
    .move = fs_move,
    .remove = fs_remove,
    .open_read = fs_open_read,
    .open_writer = fs_open_writer,
    .free = fs_free,
};

struct storage *storage_fs_new(const char *root)
{
    char probe[PATH_MAX];
    if (snprintf(probe, sizeof(probe), "%s/x", root) >= (int)sizeof(probe) ||
        mkdirs_parent(probe) != 0) {
        log_error("storage: cannot create root directory %s: %s", root, strerror(errno));
        return NULL;
    }
    struct fs_storage *fs = calloc(1, sizeof(*fs));
    if (!fs)
        return NULL;
    fs->base.ops = &fs_ops;
    fs->base.local = true;
    /* Strip trailing slashes so that root + "/docker/..." has no "//". */
    fs->root = strdup(root);
    if (!fs->root) {
        free(fs);
        return NULL;
    }
    size_t n = strlen(fs->root);
    while (n > 1 && fs->root[n - 1] == '/')
        fs->root[--n] = '\0';
    fs->root_len = n;
    return &fs->base;
}

void storage_list_free(struct storage_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
    l->names = NULL;
    l->n = 0;
}
