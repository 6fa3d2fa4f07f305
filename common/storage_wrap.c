/* The forward-all storage wrapper: one forwarder per op. */
#include "storage_wrap.h"

#include <stdlib.h>

#define INNER(s) storage_wrap_inner(s)

static enum regerr f_get_content(struct storage *s, const char *path, size_t max, char **out,
                                 size_t *len)
{
    return storage_get_content(INNER(s), path, max, out, len);
}

static enum regerr f_put_content(struct storage *s, const char *path, const void *data, size_t len)
{
    return storage_put_content(INNER(s), path, data, len);
}

static enum regerr f_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    return storage_stat(INNER(s), path, out);
}

static enum regerr f_list(struct storage *s, const char *path, struct storage_list *out)
{
    return storage_list(INNER(s), path, out);
}

static enum regerr f_move(struct storage *s, const char *src, const char *dst)
{
    return storage_move(INNER(s), src, dst);
}

static enum regerr f_remove(struct storage *s, const char *path)
{
    return storage_remove(INNER(s), path);
}

static enum regerr f_open_read(struct storage *s, const char *path, int *fd, uint64_t *size)
{
    return storage_open_read(INNER(s), path, fd, size);
}

static enum regerr f_open_writer(struct storage *s, const char *path, bool append,
                                 struct storage_writer **out)
{
    return storage_open_writer(INNER(s), path, append, out);
}

static enum regerr f_presign_get(struct storage *s, const char *path, long expires_s, char **url)
{
    return storage_presign_get(INNER(s), path, expires_s, url);
}

static enum regerr f_read_range(struct storage *s, const char *path, uint64_t off, uint64_t len,
                                storage_read_cb cb, void *ctx)
{
    return storage_read_range(INNER(s), path, off, len, cb, ctx);
}

static void f_free(struct storage *s)
{
    struct storage_wrap *w = storage_wrap_of(s);
    if (w->dispose)
        w->dispose(w);
    storage_free(w->inner);
    free(w);
}

/* over's op when it has one, else the forwarder. */
#define PICK(op) (over && over->op ? over->op : f_##op)
/* The same for an optional op, which exists only when the inner driver has it. */
#define PICK_OPTIONAL(op) (inner->ops->op ? PICK(op) : NULL)

struct storage_wrap *storage_wrap_new(struct storage *inner, size_t size,
                                      const struct storage_ops *over,
                                      void (*dispose)(struct storage_wrap *w))
{
    if (!inner || size < sizeof(struct storage_wrap))
        return NULL;
    struct storage_wrap *w = calloc(1, size);
    if (!w)
        return NULL;
    w->inner = inner;
    w->dispose = dispose;
    w->ops = (struct storage_ops){
        .name = inner->ops->name,
        .get_content = PICK(get_content),
        .put_content = PICK(put_content),
        .stat = PICK(stat),
        .list = PICK(list),
        .move = PICK(move),
        .remove = PICK(remove),
        .open_read = PICK(open_read),
        .open_writer = PICK(open_writer),
        .presign_get = PICK_OPTIONAL(presign_get),
        .read_range = PICK_OPTIONAL(read_range),
        .free = f_free,
    };
    w->base.ops = &w->ops;
    w->base.local = storage_is_local(inner);
    return w;
}
