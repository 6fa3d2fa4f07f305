#ifndef REGMIRROR_STORAGE_WRAP_H
#define REGMIRROR_STORAGE_WRAP_H
/*
 * storage_wrap: a storage driver that forwards every operation to an inner one, for wrappers
 * that intercept a few calls (metrics counts failures, storage_watch records links). A user
 * embeds struct storage_wrap first in its own struct and names only the ops it overrides; an
 * op added to struct storage_ops later needs a forwarder here and nowhere else.
 *
 * The wrapper carries its inner store's name and storage_is_local answer. An optional op
 * (presign_get, read_range) the inner driver lacks stays NULL, override or not, so callers see
 * the inner's capabilities.
 *
 * Ownership: the wrapper owns inner. storage_free on the wrapper calls dispose (the user's own
 * fields), then frees inner, then the wrapper's memory.
 */
#include <stddef.h>

#include "storage.h"

struct storage_wrap {
    struct storage base; /* what the wrapper's users are given */
    struct storage_ops ops;
    struct storage *inner;
    void (*dispose)(struct storage_wrap *w); /* NULL: nothing of the user's to release */
};

/*
 * A zeroed wrapper of size bytes (the user's struct, starting with a struct storage_wrap) over
 * inner. The non-NULL ops in over replace the forwarders (its name and free are not used);
 * over may be NULL. NULL when inner is NULL or out of memory (inner is then not taken).
 */
struct storage_wrap *storage_wrap_new(struct storage *inner, size_t size,
                                      const struct storage_ops *over,
                                      void (*dispose)(struct storage_wrap *w));

/* The wrapper behind s, which storage_wrap_new made. */
static inline struct storage_wrap *storage_wrap_of(struct storage *s)
{
    return (struct storage_wrap *)s;
}

/* The store s forwards to, for an override that calls through. */
static inline struct storage *storage_wrap_inner(struct storage *s)
{
    return storage_wrap_of(s)->inner;
}

#endif
