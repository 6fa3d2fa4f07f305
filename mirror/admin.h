#ifndef REGMIRROR_ADMIN_H
#define REGMIRROR_ADMIN_H
/*
 * admin: the cache admin routes on the debug listener (http.debug.addr), for operators and
 * `regmirror cache` (cli_cache.c). What the cache holds and the changes are inventory.h's;
 * this is the HTTP side.
 *
 *   GET    /admin/cache?repo=&n=&last=   repositories and their images, paged as _catalog
 *   DELETE /admin/cache/<name>:<tag>     purges one proxied image (?include-local=true: also
 *   DELETE /admin/cache/<name>@<digest>  a pushed one); the next pull fetches it again
 *   POST   /admin/cache/verify?repo=     re-hashes stored blobs, removes the ones that changed
 *   POST   /admin/cache/warm             prefetches a JSON list of references (see below)
 *   GET    /admin/cache/verify, /warm    the progress of the last (or running) verify, warm
 *
 * Every answer is JSON; every error the registry's error body (a bad reference: 400). With
 * client auth (auth.htpasswd) every route needs a user of that file (Basic); the debug
 * listener has no other protection.
 *
 * Storage work runs on the admin's own worker threads, so that walking a large store never
 * holds the event loop (the filesystem's pool is inline otherwise); one verify and one warm at
 * a time leave threads for listings and purges meanwhile. A warm
 * pulls through this mirror's own main listener (as a client would), so the proxy fetches
 * each blob once and records the pulls as for any client.
 *
 * Ownership: api, auth and st are borrowed and outlive the admin; admin_free waits for the
 * jobs in progress (a warm stops at its next read, a verify after its blob).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "api.h"
#include "digest.h"
#include "http.h"
#include "inventory.h"
#include "regerr.h"
#include "storage.h"

#define ADMIN_PATH "/admin/cache"

struct admin;
struct auth;
struct event_base;

/* auth may be NULL (no client auth). NULL when out of memory or no thread could start. */
struct admin *admin_new(struct event_base *base, const struct api *api, struct auth *auth,
                        struct storage *st);
void admin_free(struct admin *adm);

/* Answers a request whose path starts with ADMIN_PATH. */
void admin_serve(struct admin *adm, struct http_req *req);

/* The progress of a warm or a verify: the running one, else the last one. */
struct admin_progress {
    bool running;
    time_t started, finished; /* 0: never / not yet */
    size_t done, total;       /* blobs (warm: known so far; verify: to read) */
    uint64_t bytes;           /* fetched (warm) or read (verify) */
    size_t errors;            /* warm: references or blobs that failed; verify: blobs removed */
    char current[API_NAME_MAX + API_REF_MAX + 2]; /* warm: the reference being fetched */
};
void admin_warm_progress(struct admin *adm, struct admin_progress *out);
void admin_verify_progress(struct admin *adm, struct admin_progress *out);

/*
 * Pull counts per image since the start, for the listing: a manifest GET served for d in
 * name. Thread-safe; the table is fixed-size, so counts past its capacity are lost.
 */
void admin_note_pull(const char *name, const struct digest *d);
uint64_t admin_pulls(const char *name, const struct digest *d);

/*
 * One repository of the listing as GET /admin/cache answers it (new reference): name, size,
 * images with digest, tag, size, source, upstream, last_pulled, and pulls when asked (the
 * daemon's counts; the command line's offline listing has none).
 */
json_t *admin_repo_json(const struct config *cfg, const char *name, const struct inventory_repo *r,
                        bool pulls);

/*
 * Parses an image reference "<name>:<tag>" or "<name>@<digest>" (len bytes at s) into name
 * (API_NAME_MAX) and ref (API_REF_MAX: the tag or the digest string). REG_OK, or
 * NAME_INVALID / TAG_INVALID / DIGEST_INVALID / UNSUPPORTED (a digest algorithm regmirror
 * does not implement) with *why saying what is wrong.
 */
enum regerr admin_ref_parse(const char *s, size_t len, char *name, char *ref, const char **why);

#endif
