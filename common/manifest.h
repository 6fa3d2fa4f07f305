#ifndef REGMIRROR_MANIFEST_H
#define REGMIRROR_MANIFEST_H
/*
 * manifest: media types, parsing and validation of image manifests and indexes (Docker
 * schema2, Docker manifest list, OCI image manifest and OCI image index, image-spec v1.1),
 * and Accept-header negotiation.
 *
 * Validation follows distribution 2.8 where it is stricter than the JSON grammar and the
 * image-spec where distribution is silent. Docker schema1 is not supported at all.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "regerr.h"

#define MANIFEST_MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MANIFEST_MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MANIFEST_MT_DOCKER_V2 "application/vnd.docker.distribution.manifest.v2+json"
#define MANIFEST_MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MANIFEST_MT_DOCKER_V1 "application/vnd.docker.distribution.manifest.v1+json"
#define MANIFEST_MT_DOCKER_V1_SIGNED "application/vnd.docker.distribution.manifest.v1+prettyjws"
#define MANIFEST_MT_OCI_CONFIG "application/vnd.oci.image.config.v1+json"
#define MANIFEST_MT_DOCKER_CONFIG "application/vnd.docker.container.image.v1+json"
#define MANIFEST_MT_OCI_EMPTY "application/vnd.oci.empty.v1+json"

/* Most entries accepted in "layers" or "manifests". */
#define MANIFEST_MAX_DESCRIPTORS 10000
/* Longest media type, artifact type or platform string accepted (RFC 6838 allows 127 + 1 +
 * 127 for a media type). */
#define MANIFEST_MAX_STRING 255

enum manifest_kind { MANIFEST_DOCKER_V2, MANIFEST_DOCKER_LIST, MANIFEST_OCI, MANIFEST_OCI_INDEX };

/* A content descriptor. Every string is owned by the enclosing struct manifest; NULL when the
 * property is absent. */
struct manifest_desc {
    char *media_type; /* never NULL in a parsed manifest */
    struct digest digest;
    int64_t size; /* >= 0 */
    char *artifact_type;
    char *os, *arch, *variant; /* platform, for index entries */
    char *annotations_json;    /* the "annotations" object serialized compactly */
    char **urls;               /* "urls", nurls strings (NULL when absent) */
    size_t nurls;
};

struct manifest {
    enum manifest_kind kind;
    char *media_type; /* the canonical media type of kind */
    struct manifest_desc config;
    bool has_config;              /* true for image kinds */
    struct manifest_desc *layers; /* images: "layers"; indexes: "manifests" */
    size_t nlayers;
    struct manifest_desc subject; /* OCI kinds only */
    bool has_subject;
    /* The artifactType a referrers listing reports for this manifest: its own artifactType,
     * else, for an OCI image manifest, config.mediaType, as the distribution-spec requires
     * ("If the artifactType is empty or missing in the image manifest, the value of
     * artifactType MUST be set to the config descriptor mediaType value"). NULL for indexes
     * without artifactType and for Docker kinds. */
    char *artifact_type;
    char *annotations_json; /* the manifest's "annotations" (OCI kinds), serialized, or NULL */
};

/*
 * Parses and validates len bytes of body. content_type is the request's Content-Type
 * (parameters ignored, may be NULL).
 *
 * The kind comes from content_type when it names one of the four manifest types, else from
 * the "mediaType" property, else from the shape ("manifests" means an OCI index, "config" or
 * "layers" an OCI manifest). Rules, each a REG_ERR_MANIFEST_INVALID unless noted:
 *  - valid UTF-8 JSON object, no duplicate keys, nesting within jansson's depth limit;
 *  - schemaVersion is the integer 2;
 *  - "mediaType", if present, is one of the four types and agrees with content_type; the two
 *    Docker types require it, as distribution does;
 *  - images have a "config" descriptor, no "manifests"; indexes have a "manifests" array and
 *    no "config" or "layers"; at most MANIFEST_MAX_DESCRIPTORS entries;
 *  - every descriptor has an RFC 6838 mediaType, a digest regmirror can verify (sha256 or
 *    sha512) and an integer size >= 0; optional urls, annotations (string map), artifactType
 *    and platform (os and architecture strings) have their spec types.
 * Docker schema1 (schemaVersion 1 or its media types, in content_type or mediaType) gives
 * REG_ERR_UNSUPPORTED; out of memory gives REG_ERR_INTERNAL.
 *
 * On REG_OK *out owns the parsed data; release it with manifest_free. On error *out is left
 * empty (manifest_free on it is harmless) and errbuf (errlen bytes, may be NULL/0) holds a
 * message naming the problem, e.g. `layers[2].digest: invalid digest "sha256:xyz"`. Quoted
 * input is shortened and stripped of control bytes so it is safe to echo.
 */
enum regerr manifest_parse(const char *body, size_t len, const char *content_type,
                           struct manifest *out, char *errbuf, size_t errlen);

/* Frees what *m owns and zeroes it. NULL is fine. */
void manifest_free(struct manifest *m);

/* The canonical media type of a kind. */
const char *manifest_kind_media_type(enum manifest_kind kind);

/*
 * Content negotiation: whether media type mt is acceptable given the request's Accept header
 * lines (n of them; each may be a comma-separated list with parameters).
 *
 * Ranges match case-insensitively, wildcard ranges too (subtype "*", or "*" for both type and
 * subtype); the most specific matching range decides, and "q=0" there refuses mt. No Accept
 * lines, or lines with no well-formed range at all, accept everything (RFC 9110).
 *
 * Differences from distribution 2.8, which compares exact types only and ignores q and
 * wildcards: a client sending only a wildcard gets what is stored instead of MANIFEST_UNKNOWN.
 * What the API does when a stored type is not acceptable (distribution 2.8: MANIFEST_UNKNOWN
 * for OCI types; for a Docker list fetched by tag, the linux/amd64 entry) is its decision.
 */
bool manifest_accepts(const char *const *accept_values, size_t n, const char *mt);

#endif
