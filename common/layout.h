#ifndef REGMIRROR_LAYOUT_H
#define REGMIRROR_LAYOUT_H
/*
 * layout: the storage paths of distribution's on-disk layout, so that regmirror and
 * registry:2 can share one root directory. Every path is relative to the driver's root and
 * starts with "/docker/registry/v2".
 *
 * Each function writes into buf (size LAYOUT_PATH_MAX) and returns buf. Callers pass names,
 * tags and upload ids that were validated already; the functions do not check them.
 */
#include "digest.h"

#define LAYOUT_PATH_MAX 1024

/* /docker/registry/v2/blobs/sha256/ab/abcd.../data */
char *layout_blob_data(char *buf, const struct digest *d);
/* /docker/registry/v2/blobs/sha256/ab/abcd... (the directory holding data) */
char *layout_blob_dir(char *buf, const struct digest *d);
/* /docker/registry/v2/repositories */
char *layout_repositories(char *buf);
/* /docker/registry/v2/repositories/<name> */
char *layout_repo(char *buf, const char *name);
/* .../<name>/_layers/sha256/<hex>/link */
char *layout_layer_link(char *buf, const char *name, const struct digest *d);
/* .../<name>/_manifests/revisions/sha256/<hex>/link */
char *layout_revision_link(char *buf, const char *name, const struct digest *d);
/* .../<name>/_manifests/revisions/sha256 */
char *layout_revisions_dir(char *buf, const char *name, enum digest_algo algo);
/* .../<name>/_manifests/tags */
char *layout_tags_dir(char *buf, const char *name);
/* .../<name>/_manifests/tags/<tag> */
char *layout_tag_dir(char *buf, const char *name, const char *tag);
/* .../<name>/_manifests/tags/<tag>/current/link */
char *layout_tag_current(char *buf, const char *name, const char *tag);
/* .../<name>/_manifests/tags/<tag>/index/sha256/<hex>/link */
char *layout_tag_index_link(char *buf, const char *name, const char *tag, const struct digest *d);
/* .../<name>/_uploads/<id> */
char *layout_upload_dir(char *buf, const char *name, const char *id);
/* .../<name>/_uploads/<id>/data */
char *layout_upload_data(char *buf, const char *name, const char *id);
/* .../<name>/_uploads/<id>/startedat */
char *layout_upload_startedat(char *buf, const char *name, const char *id);

/* .../<name>/_proxy/tags/<tag>: the pull-through cache's marker of a proxied tag */
char *layout_proxy_tag(char *buf, const char *name, const char *tag);

/* .../<name>/_proxy/pulled/<algo>/<hex>: proxied content; its mtime is the last pull */
char *layout_proxy_pulled(char *buf, const char *name, const struct digest *d);

#endif
