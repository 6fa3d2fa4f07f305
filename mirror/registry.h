#ifndef REGMIRROR_REGISTRY_H
#define REGMIRROR_REGISTRY_H
/*
 * registry: repositories, manifests, blobs and uploads on top of a storage driver, in
 * distribution's layout. No HTTP in here: the api_* files translate requests into these
 * calls and the enum regerr results into responses.
 *
 * Names, tags and digests passed in must have been validated (reference.h, digest.h).
 * Out-parameters that return memory say who frees it.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "digest.h"
#include "manifest.h"
#include "regerr.h"
#include "storage.h"

/* Largest manifest accepted or read back (distribution's limit). */
#define REGISTRY_MANIFEST_MAX (4u * 1024 * 1024)

struct registry;
struct registry_upload;

/*
 * Which URLs the layers a manifest does not need stored may name, as registry:2's
 * validation.manifests.urls: a Docker foreign layer, an OCI layer with urls. Every URL must be
 * http(s) with no fragment; with enabled, one of allow must match it (no list at all: nothing
 * is allowed) and none of deny. Patterns are POSIX extended regular expressions, borrowed.
 */
struct registry_url_policy {
    bool enabled;
    char *const *allow;
    size_t nallow;
    char *const *deny;
    size_t ndeny;
};

struct registry_opts {
    bool delete_enabled;
    const struct registry_url_policy *urls; /* NULL: any http(s) URL */
};

/* The registry borrows st; the caller frees st after registry_free. NULL when out of memory
 * or when a pattern of opts->urls does not compile (config_load checks them first). */
struct registry *registry_new(struct storage *st, const struct registry_opts *opts);
void registry_free(struct registry *reg);
bool registry_delete_enabled(const struct registry *reg);
/* Whether the store is this host's filesystem (storage_is_local): its blobs can be opened. */
bool registry_is_local(const struct registry *reg);
/* The store under the registry (borrowed), for the cache inventory (inventory.h). */
struct storage *registry_storage(struct registry *reg);

/* ---- blobs ---- */
/* Size of a blob linked into repository name; BLOB_UNKNOWN when not linked or absent. */
enum regerr registry_blob_stat(struct registry *reg, const char *name, const struct digest *d,
                               uint64_t *size);
/* Opens a linked blob for reading; the caller owns *fd. */
enum regerr registry_blob_open(struct registry *reg, const char *name, const struct digest *d,
                               int *fd, uint64_t *size);
/*
 * For drivers without local files (open_read answers REG_ERR_UNSUPPORTED): a signed URL the
 * client may GET the blob from until expires_s (REG_ERR_UNSUPPORTED when the driver has
 * none; *url is the caller's), or the bytes [off, off + len) streamed into cb (blocking).
 * The caller has found the blob linked already.
 */
enum regerr registry_blob_url(struct registry *reg, const struct digest *d, long expires_s,
                              char **url);
enum regerr registry_blob_read(struct registry *reg, const struct digest *d, uint64_t off,
                               uint64_t len, storage_read_cb cb, void *ctx);
/* Unlinks the blob from the repository (the data stays until garbage collection). */
enum regerr registry_blob_delete(struct registry *reg, const char *name, const struct digest *d);
/* Links a blob that repository from has into name; BLOB_UNKNOWN when from lacks it. */
enum regerr registry_blob_mount(struct registry *reg, const char *name, const char *from,
                                const struct digest *d);

/* ---- uploads ---- */
/* Starts an upload session; id receives its id (37 bytes). */
enum regerr registry_upload_start(struct registry *reg, const char *name, char id[37]);
/* Current size of the upload; BLOB_UPLOAD_UNKNOWN when there is none. */
enum regerr registry_upload_size(struct registry *reg, const char *name, const char *id,
                                 uint64_t *size);
/*
 * Opens the session for appending. The handle hashes what is written; release it with
 * registry_upload_close (keeps the session) or pass it to registry_upload_commit.
 */
enum regerr registry_upload_open(struct registry *reg, const char *name, const char *id,
                                 struct registry_upload **out);
uint64_t registry_upload_offset(const struct registry_upload *up);
enum regerr registry_upload_write(struct registry_upload *up, const void *data, size_t len);
/* Keeps the session. On a remote store closing is what stores the bytes: check the result. */
enum regerr registry_upload_close(struct registry_upload *up);
/*
 * Cuts the session back to offset bytes (what it held before a request that failed), so a
 * failed write keeps no space; REG_ERR_UNSUPPORTED where the storage cannot.
 */
enum regerr registry_upload_rewind(struct registry_upload *up, uint64_t offset);
/*
 * Verifies the content against d (DIGEST_INVALID on mismatch, and the session stays so the
 * client may retry), moves it into place, links it into the repository, and ends the
 * session. Consumes up whatever the result.
 */
enum regerr registry_upload_commit(struct registry_upload *up, const struct digest *d);
/* Cancels the session and removes its data. */
enum regerr registry_upload_cancel(struct registry *reg, const char *name, const char *id);

/* ---- manifests ---- */
/* A manifest read back: body (malloc'd, caller frees), its digest and media type. */
struct registry_manifest {
    char *body;
    size_t len;
    struct digest digest;
    char media_type[128];
};
void registry_manifest_release(struct registry_manifest *m);

/* The digest ref (tag or digest) stands for in name; MANIFEST_UNKNOWN when none. */
enum regerr registry_manifest_resolve(struct registry *reg, const char *name, const char *ref,
                                      struct digest *out);
/* By tag (ref is a tag) or by digest (ref parses as a digest). */
enum regerr registry_manifest_get(struct registry *reg, const char *name, const char *ref,
                                  struct registry_manifest *out);
/*
 * The manifest d, which the caller has just resolved in its repository with
 * registry_manifest_resolve: no link is read again. Bodies are kept in memory by digest
 * (16 MiB at most), so a cached manifest costs no storage access.
 */
enum regerr registry_manifest_get_resolved(struct registry *reg, const struct digest *d,
                                           struct registry_manifest *out);
/*
 * Validates and stores a manifest, tagging it when ref is a tag. errbuf receives detail for
 * the error body. *digest_out is the manifest's digest; *has_subject tells whether the
 * manifest names a subject (subject_out then holds it) for the OCI-Subject header.
 */
enum regerr registry_manifest_put(struct registry *reg, const char *name, const char *ref,
                                  const char *body, size_t len, const char *content_type,
                                  struct digest *digest_out, bool *has_subject,
                                  struct digest *subject_out, char *errbuf, size_t errlen);
/*
 * Stores a manifest whose digest the caller verified, without checking its references (the
 * pull-through cache fetches blobs lazily), and points tag at it when tag is not NULL.
 */
enum regerr registry_manifest_store(struct registry *reg, const char *name, const char *tag,
                                    const char *body, size_t len, const struct digest *d);
/* Deletes by digest (revision and every tag pointing at it) or by tag (the tag only). */
enum regerr registry_manifest_delete(struct registry *reg, const char *name, const char *ref);

/* ---- the pull-through cache's own records ----
 * A tag fetched from the upstream carries a marker (repositories/<name>/_proxy/tags/<tag>)
 * holding when it was last checked; a tag without one was pushed here and the proxy never
 * touches it. registry:2 ignores the _proxy directory.
 */
/* Whether tag is a proxied one; *checked receives the time of the last upstream check. */
bool registry_proxy_tag_checked(struct registry *reg, const char *name, const char *tag,
                                time_t *checked);
/* Points a proxied tag at d (stored already) and records the check time now. */
enum regerr registry_proxy_tag_set(struct registry *reg, const char *name, const char *tag,
                                   const struct digest *d);
/* Records that the tag was re-checked now and is unchanged. */
enum regerr registry_proxy_tag_touch(struct registry *reg, const char *name, const char *tag);
/*
 * Records a pull of proxied content d (blob or manifest) in name, for proxy.ttl expiry: the
 * marker's mtime is the last pull. create marks content the proxy just fetched; otherwise
 * only an existing marker is touched, so local content never gets one.
 */
enum regerr registry_proxy_pulled(struct registry *reg, const char *name, const struct digest *d,
                                  bool create);
/* Whether the blob's data is in storage, linked into any repository or not. */
bool registry_blob_stored(struct registry *reg, const struct digest *d);
/* Links a stored blob into name. */
enum regerr registry_blob_link(struct registry *reg, const char *name, const struct digest *d);
/*
 * Stores len bytes read from fd (a verified local file: the proxy's spool) as blob d and
 * links it into name. Meant for remote drivers, where the object appears whole at the
 * writer's close (one multipart upload) or not at all; the filesystem writer writes in place,
 * so on the filesystem the spool is committed with registry_upload_commit (a rename).
 * Blocking: call it from offload work.
 */
enum regerr registry_blob_import(struct registry *reg, const char *name, const struct digest *d,
                                 int fd, uint64_t len);
/* Opens the data an upload session has received so far, for readers that follow it. */
enum regerr registry_upload_reader(struct registry *reg, const char *name, const char *id, int *fd);

/* ---- discovery ---- */
/* Sorted tags of name; NAME_UNKNOWN for an unknown repository. storage_list_free the list. */
enum regerr registry_tags(struct registry *reg, const char *name, struct storage_list *out);
/* Sorted repository names. */
enum regerr registry_catalog(struct registry *reg, struct storage_list *out);
/*
 * The referrers of subject in name as an OCI image index (new reference, caller
 * json_decref's), filtered by artifact_type when not NULL.
 */
enum regerr registry_referrers(struct registry *reg, const char *name, const struct digest *subject,
                               const char *artifact_type, json_t **out);

#endif
