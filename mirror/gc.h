#ifndef REGMIRROR_GC_H
#define REGMIRROR_GC_H
/*
 * gc: offline mark and sweep of a store (`regmirror garbage-collect`), as registry:2 does it,
 * plus the pieces the online maintenance shares with it (a digest set, the references of a
 * stored manifest, the repository walk) and the instance lock that keeps the two apart.
 *
 * Mark: in every repository, every manifest revision (with delete_untagged only the ones a tag
 * points at), the children of indexes and manifest lists, recursively, and the config and
 * layer blobs of every marked manifest. OCI referrers (revisions whose subject is marked in
 * the same repository) are marked with their subject, also recursively.
 * Sweep, only after the whole mark finished: untagged revisions (with delete_untagged), then
 * the repository links and pull records of unmarked blobs, then the unmarked blobs. Links go
 * before what they point at, so an interruption at any point leaves every kept image whole;
 * a second run finishes the job.
 *
 * The instance lock: `<rootdirectory>/regmirror.lock` (filesystem driver; registry:2 ignores
 * it). A serve that may write holds a shared flock on it while it runs and writes its pid
 * there; a read-only serve (storage.maintenance.readonly) takes none. garbage-collect takes
 * the lock exclusively without waiting: when it cannot, a writable regmirror is running and
 * it refuses (GC_EXIT_BUSY) unless --force; while garbage-collect holds it, a writable serve
 * refuses to start. Other drivers (OSS) have no such lock, so garbage-collect cannot tell
 * whether a writer runs: it refuses unless --force (a dry run goes on, with a warning).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "digest.h"
#include "regerr.h"
#include "storage.h"

/* Exit code of garbage-collect when a writable regmirror holds the store. */
#define GC_EXIT_BUSY 3
/* The lock file's name under the filesystem root directory. */
#define GC_LOCK_NAME "regmirror.lock"

struct gc_opts {
    bool dry_run;
    bool delete_untagged;
    bool force;
};

struct gc_result {
    size_t repositories;
    size_t manifests_marked, blobs_marked;
    size_t manifests_deleted, blobs_deleted; /* or that would be, in a dry run */
    uint64_t bytes_freed;
};

/*
 * Parses the arguments after "garbage-collect": [--dry-run] [--delete-untagged] [--force]
 * CONFIG (also -d, -m, -f as registry:2 spells the first two). 0, or -1 after printing the
 * problem and the usage to stderr.
 */
int gc_parse_args(int argc, char **argv, struct gc_opts *opts, const char **config_path);

/*
 * Marks and sweeps st. Every manifest and blob that goes (or would go, dry run) is printed
 * to out, with a summary at the end. Reading a manifest that exists but cannot be read as
 * one stops the run before anything is deleted (REG_ERR_MANIFEST_INVALID): its references
 * are unknown. The caller makes sure no writer runs (gc_main does).
 */
enum regerr gc_run(struct storage *st, const struct gc_opts *opts, FILE *out,
                   struct gc_result *res);

/* The command: takes the lock (see above), runs, reports. Returns the process exit code. */
int gc_main(const struct config *cfg, struct storage *st, const struct gc_opts *opts);

/*
 * serve's side of the lock. *fd is -1 when no lock is taken (read-only, other drivers) and
 * otherwise must stay open while serving; gc_serve_unlock(fd) releases it. -1 (logged) when a
 * garbage-collect is running on the store.
 */
int gc_serve_lock(const struct config *cfg, int *fd);
void gc_serve_unlock(int fd);

/* ---- shared with the online maintenance ---- */

/* A set of digests, each with a value for the caller (size, counter). */
struct gc_set_entry {
    struct digest d;
    bool used;
    uint64_t val;
};
struct gc_set {
    struct gc_set_entry *v;
    size_t n, cap;
};
/* Adds d (val 0); *e (may be NULL) receives its entry. 1 when new, 0 when present, -1 OOM.
 * Entry pointers stay valid until the next add. */
int gc_set_add(struct gc_set *s, const struct digest *d, struct gc_set_entry **e);
struct gc_set_entry *gc_set_find(const struct gc_set *s, const struct digest *d);
void gc_set_free(struct gc_set *s);

/* What a stored manifest points at. */
struct gc_refs {
    struct digest *blobs; /* config and layers (schema1: fsLayers) */
    size_t nblobs;
    struct digest *children; /* index and manifest-list entries */
    size_t nchildren;
    bool has_subject;
    struct digest subject;
};
/*
 * Reads the manifest stored as blob d and collects its references, leniently (any JSON
 * object; digests regmirror cannot store are skipped), so that manifests registry:2 stored
 * are read too. REG_ERR_NOT_FOUND when the blob is absent, REG_ERR_MANIFEST_INVALID when it
 * is not a JSON object. gc_refs_free releases *out.
 */
enum regerr gc_manifest_refs(struct storage *st, const struct digest *d, struct gc_refs *out);
void gc_refs_free(struct gc_refs *r);

/*
 * Walks the repositories of st one at a time (a repository is a directory holding _manifests,
 * _layers, _uploads or _proxy), so that the online maintenance can spread the walk over
 * timer ticks. gc_walk_next writes the next name into name (LAYOUT_PATH_MAX bytes) and
 * returns 1, 0 at the end, -1 on a storage error. NULL from gc_walk_new when out of memory.
 */
struct gc_walk;
struct gc_walk *gc_walk_new(struct storage *st);
int gc_walk_next(struct gc_walk *w, char *name);
void gc_walk_free(struct gc_walk *w);

/* The revisions of repository name whose link and manifest blob exist (as registry:2
 * enumerates them), appended to *v (malloc'd, caller frees). */
enum regerr gc_revisions(struct storage *st, const char *name, struct digest **v, size_t *n);
/* Reads a link file; REG_ERR_NOT_FOUND also when it holds no digest. */
enum regerr gc_read_link(struct storage *st, const char *path, struct digest *out);
/* Appends d to the array *v of *n digests (grown as needed); 0 or -1. */
int gc_push_digest(struct digest **v, size_t *n, const struct digest *d);

/* Parses a link file's directory name (<hex> under <algo>) into a digest; 0 or -1. */
int gc_digest_from(enum digest_algo algo, const char *hex, struct digest *out);

#endif
