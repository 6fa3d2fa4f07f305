#ifndef REGMIRROR_INVENTORY_H
#define REGMIRROR_INVENTORY_H
/*
 * inventory: what the cache holds, read from the store, and the operator's changes to it
 * (`regmirror cache`, the /admin/cache routes of admin.h).
 *
 * An image is a tag, or a manifest revision that no tag points at and no other manifest of
 * its repository lists (a child of an index is part of its index's image). Its size counts
 * the manifest, its children, and every blob they reach, each once. It is proxied when the
 * proxy recorded it (a tag marker, registry_proxy_tag_*; for a digest, a pull record,
 * registry_proxy_pulled), else pushed here. Its last pull is the newest pull record of its
 * manifests.
 *
 * Every function here blocks on storage: call them from offload work or the command line.
 * They are thread-safe as the storage and registry are. Names, tags and digests passed in
 * are validated already (reference.h, digest.h).
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config.h"
#include "digest.h"
#include "regerr.h"
#include "storage.h"

#define INVENTORY_REF_MAX 160

struct inventory_image {
    char tag[INVENTORY_REF_MAX]; /* "" for an untagged revision */
    struct digest digest;
    uint64_t size;
    bool local;               /* pushed here: rm keeps it unless asked */
    time_t last_pulled;       /* 0: no pull recorded */
    struct digest *manifests; /* digest and its children, recursively (malloc'd) */
    size_t nmanifests;
};

struct inventory_repo {
    struct inventory_image *images; /* tags first (sorted), then untagged revisions */
    size_t n;
};

/* The images of repository name. NAME_UNKNOWN when it holds none; inventory_repo_free. */
enum regerr inventory_repo_read(struct storage *st, const char *name, struct inventory_repo *out);
void inventory_repo_free(struct inventory_repo *r);

/*
 * The upstream the proxied content of repository name comes from: another upstream's under
 * "<host>/" (":" spelled "-", as the proxy names it), else the main one. NULL without a proxy.
 */
const char *inventory_upstream(const struct config *cfg, const char *name);

/* What a purge or verify removed. */
struct inventory_removed {
    size_t manifests, blobs; /* revisions unlinked; blob data removed */
    uint64_t bytes;
    struct digest *digests; /* every digest whose link or data went (malloc'd) */
    size_t n;
};
void inventory_removed_free(struct inventory_removed *r);

/*
 * Purges one image of name (ref: a tag or a digest string): its tags, its manifests and the
 * links of what they reach in name unless another image of name reaches it too, and then the
 * data of whatever no repository links any more. A local image (or a proxied digest that a
 * pushed tag points at) is refused with REG_ERR_DENIED unless include_local. MANIFEST_UNKNOWN
 * when ref names no image of name.
 */
enum regerr inventory_purge(struct storage *st, const char *name, const char *ref,
                            bool include_local, struct inventory_removed *out);

/* Progress of a verify: called after each blob (done of total, bytes read so far) on the
 * verifying thread. */
typedef void (*inventory_progress_fn)(void *ctx, size_t done, size_t total, uint64_t bytes);

/*
 * Re-hashes the stored blobs (those linked in repository name, or every blob when name is
 * NULL) and removes the data of each whose bytes no longer match its digest, so the next pull
 * fetches it again; a manifest among them also loses its revision link and its tags there. out
 * lists them (blobs, bytes). *checked counts the blobs read. progress may be NULL; stop (may be
 * NULL) is read between blobs: when it turns true the walk ends.
 */
enum regerr inventory_verify(struct storage *st, const char *name, inventory_progress_fn progress,
                             void *ctx, const atomic_bool *stop, size_t *checked,
                             struct inventory_removed *out);

#endif
