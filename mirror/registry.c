#include "registry.h"

#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "layout.h"
#include "log.h"
#include "reference.h"

/* Link files hold "algo:hex"; anything longer is not a link we wrote. */
#define LINK_MAX 256
/* Upload sessions whose hash state is kept in memory; older ones are re-hashed on commit. */
#define UPLOAD_STATES_MAX 1024
/* Manifest bodies kept in memory by digest (see mcache_get), and the largest one kept. */
#define MCACHE_BYTES (16u * 1024 * 1024)
#define MCACHE_ENTRY_MAX (1u * 1024 * 1024)
#define MCACHE_BUCKETS 4096

/* Hash state of an upload session between requests. */
struct upload_state {
    struct upload_state *next;
    char *name;
    char id[37];
    /* sha256 only: it is what clients and registries use, and hashing twice halves the
     * ingest rate. A sha512 commit re-hashes the data from storage instead. */
    struct digest_hasher *hasher;
    uint64_t hashed; /* bytes fed to the hashers */
};

/* A stored manifest: its body and media type, by digest. */
struct mcache_entry {
    struct mcache_entry *hnext;       /* bucket chain */
    struct mcache_entry *prev, *next; /* recency list, most recent first */
    struct digest digest;
    char media_type[128];
    size_t len;
    char body[];
};

/*
 * Calls may come from several threads at once (offload.h): the mutex guards the upload
 * states and the manifest cache; storage drivers are thread-safe themselves.
 */
struct registry {
    struct storage *st;
    struct registry_opts opts;
    /* opts.urls compiled: url_allow[nurl_allow], url_deny[nurl_deny] */
    bool url_check;
    regex_t *url_allow, *url_deny;
    size_t nurl_allow, nurl_deny;
    pthread_mutex_t mu;
    struct upload_state *states;
    size_t nstates;
    /* The manifest cache: bounded by MCACHE_BYTES, entries and headers counted. */
    struct mcache_entry *mbuckets[MCACHE_BUCKETS];
    struct mcache_entry *mhead, *mtail;
    size_t mbytes;
};

struct registry_upload {
    struct registry *reg;
    struct upload_state *state; /* taken out of reg->states while the session is open */
    struct storage_writer *w;
    char *name;
    char id[37];
};

/* Compiles n patterns into a new *out; counts what compiled in *done (freed by the caller). */
static int compile_all(char *const *pats, size_t n, regex_t **out, size_t *done)
{
    if (n == 0)
        return 0;
    *out = calloc(n, sizeof(**out));
    if (!*out)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (regcomp(&(*out)[i], pats[i], REG_EXTENDED | REG_NOSUB) != 0) {
            log_error("registry: validation.manifests.urls: cannot compile \"%s\"", pats[i]);
            return -1;
        }
        (*done)++;
    }
    return 0;
}

struct registry *registry_new(struct storage *st, const struct registry_opts *opts)
{
    struct registry *reg = calloc(1, sizeof(*reg));
    if (!reg)
        return NULL;
    reg->st = st;
    reg->opts = *opts;
    pthread_mutex_init(&reg->mu, NULL);
    const struct registry_url_policy *u = opts->urls;
    reg->opts.urls = NULL; /* borrowed only for the patterns */
    reg->url_check = u && u->enabled;
    if (reg->url_check &&
        (compile_all(u->allow, u->nallow, &reg->url_allow, &reg->nurl_allow) != 0 ||
         compile_all(u->deny, u->ndeny, &reg->url_deny, &reg->nurl_deny) != 0)) {
        registry_free(reg);
        return NULL;
    }
    return reg;
}

static void state_free(struct upload_state *s)
{
    digest_hasher_free(s->hasher);
    free(s->name);
    free(s);
}

void registry_free(struct registry *reg)
{
    if (!reg)
        return;
    while (reg->states) {
        struct upload_state *s = reg->states;
        reg->states = s->next;
        state_free(s);
    }
    while (reg->mhead) {
        struct mcache_entry *e = reg->mhead;
        reg->mhead = e->next;
        free(e);
    }
    for (size_t i = 0; i < reg->nurl_allow; i++)
        regfree(&reg->url_allow[i]);
    for (size_t i = 0; i < reg->nurl_deny; i++)
        regfree(&reg->url_deny[i]);
    free(reg->url_allow);
    free(reg->url_deny);
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

bool registry_delete_enabled(const struct registry *reg)
{
    return reg->opts.delete_enabled;
}

bool registry_is_local(const struct registry *reg)
{
    return storage_is_local(reg->st);
}

struct storage *registry_storage(struct registry *reg)
{
    return reg->st;
}

/* ---- links ---- */

static enum regerr read_link(struct registry *reg, const char *path, struct digest *out)
{
    char *body = NULL;
    size_t len = 0;
    enum regerr result = storage_get_content(reg->st, path, LINK_MAX, &body, &len);
    if (result == REG_ERR_TOO_LARGE)
        result = REG_ERR_INTERNAL;
    if (result != REG_OK)
        return result;
    if (digest_parse(body, len, out) != 0) {
        log_error("registry: corrupt link %s", path);
        result = REG_ERR_INTERNAL;
    }
    free(body);
    return result;
}

static enum regerr write_link(struct registry *reg, const char *path, const struct digest *d)
{
    char s[DIGEST_STR_MAX];
    digest_str(d, s);
    return storage_put_content(reg->st, path, s, strlen(s));
}

static bool path_exists(struct registry *reg, const char *path)
{
    struct storage_stat st;
    return storage_stat(reg->st, path, &st) == REG_OK;
}

/* ---- blobs ---- */

enum regerr registry_blob_stat(struct registry *reg, const char *name, const struct digest *d,
                               uint64_t *size)
{
    char path[LAYOUT_PATH_MAX];
    struct digest linked;
    enum regerr result = read_link(reg, layout_layer_link(path, name, d), &linked);
    if (result == REG_ERR_NOT_FOUND)
        return REG_ERR_BLOB_UNKNOWN;
    if (result != REG_OK)
        return result;
    struct storage_stat st;
    result = storage_stat(reg->st, layout_blob_data(path, d), &st);
    if (result == REG_ERR_NOT_FOUND)
        return REG_ERR_BLOB_UNKNOWN;
    if (result == REG_OK)
        *size = st.size;
    return result;
}

enum regerr registry_blob_open(struct registry *reg, const char *name, const struct digest *d,
                               int *fd, uint64_t *size)
{
    char path[LAYOUT_PATH_MAX];
    struct digest linked;
    /* the link, then the data: opening it tells whether it is there (no separate stat) */
    enum regerr result = read_link(reg, layout_layer_link(path, name, d), &linked);
    if (result == REG_ERR_NOT_FOUND)
        return REG_ERR_BLOB_UNKNOWN;
    if (result != REG_OK)
        return result;
    result = storage_open_read(reg->st, layout_blob_data(path, d), fd, size);
    return result == REG_ERR_NOT_FOUND ? REG_ERR_BLOB_UNKNOWN : result;
}

enum regerr registry_blob_url(struct registry *reg, const struct digest *d, long expires_s,
                              char **url)
{
    char path[LAYOUT_PATH_MAX];
    return storage_presign_get(reg->st, layout_blob_data(path, d), expires_s, url);
}

enum regerr registry_blob_read(struct registry *reg, const struct digest *d, uint64_t off,
                               uint64_t len, storage_read_cb cb, void *ctx)
{
    char path[LAYOUT_PATH_MAX];
    return storage_read_range(reg->st, layout_blob_data(path, d), off, len, cb, ctx);
}

enum regerr registry_blob_delete(struct registry *reg, const char *name, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    layout_layer_link(path, name, d);
    /* Remove the link's directory, as distribution does, so no empty dirs pile up. */
    char *slash = strrchr(path, '/');
    *slash = '\0';
    enum regerr result = storage_remove(reg->st, path);
    return result == REG_ERR_NOT_FOUND ? REG_ERR_BLOB_UNKNOWN : result;
}

enum regerr registry_blob_mount(struct registry *reg, const char *name, const char *from,
                                const struct digest *d)
{
    uint64_t size;
    enum regerr result = registry_blob_stat(reg, from, d, &size);
    if (result != REG_OK)
        return result;
    char path[LAYOUT_PATH_MAX];
    return write_link(reg, layout_layer_link(path, name, d), d);
}

/* ---- uploads ---- */

/* The upload states: the caller holds reg->mu. */
static struct upload_state *state_find(struct registry *reg, const char *name, const char *id,
                                       bool unlink_it)
{
    for (struct upload_state **p = &reg->states; *p; p = &(*p)->next) {
        struct upload_state *s = *p;
        if (strcmp(s->id, id) == 0 && strcmp(s->name, name) == 0) {
            if (unlink_it) {
                *p = s->next;
                reg->nstates--;
            }
            return s;
        }
    }
    return NULL;
}

static void state_drop(struct registry *reg, const char *name, const char *id)
{
    struct upload_state *s = state_find(reg, name, id, true);
    if (s)
        state_free(s);
}

/* Drops the oldest state (the tail): its commit will re-hash the data from storage. */
static void state_evict_oldest(struct registry *reg)
{
    struct upload_state **p = &reg->states;
    while ((*p)->next)
        p = &(*p)->next;
    state_free(*p);
    *p = NULL;
    reg->nstates--;
}

/* A hash state that has seen no bytes, for a session that holds none. */
static struct upload_state *state_new(const char *name, const char *id)
{
    struct upload_state *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->name = strdup(name);
    s->hasher = digest_hasher_new(DIGEST_SHA256);
    if (!s->name || !s->hasher) {
        state_free(s);
        return NULL;
    }
    snprintf(s->id, sizeof(s->id), "%s", id);
    return s;
}

static void new_upload_id(char id[37])
{
    unsigned char r[16];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        /* getrandom on Linux does not fail for 16 bytes once booted; keep ids unique anyway. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        memcpy(r, &ts, sizeof(ts) < sizeof(r) ? sizeof(ts) : sizeof(r));
    }
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(id, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0],
             r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
             r[14], r[15]);
}

enum regerr registry_upload_start(struct registry *reg, const char *name, char id[37])
{
    new_upload_id(id);
    char path[LAYOUT_PATH_MAX];
    char ts[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    enum regerr result =
        storage_put_content(reg->st, layout_upload_startedat(path, name, id), ts, strlen(ts));
    if (result != REG_OK)
        return result;
    /* No hash state yet: the first open of the empty session makes one, on whichever node
     * (of several on one storage) the client's next request reaches. */
    return storage_put_content(reg->st, layout_upload_data(path, name, id), "", 0);
}

enum regerr registry_upload_size(struct registry *reg, const char *name, const char *id,
                                 uint64_t *size)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat st;
    enum regerr result = storage_stat(reg->st, layout_upload_data(path, name, id), &st);
    if (result == REG_ERR_NOT_FOUND)
        return REG_ERR_BLOB_UPLOAD_UNKNOWN;
    if (result == REG_OK)
        *size = st.size;
    return result;
}

/*
 * Closes the writer and hands the hash state back to the registry for the next request (a
 * failed close leaves the stored bytes behind what was hashed: the state goes then).
 */
static enum regerr upload_release(struct registry_upload *up)
{
    enum regerr result = up->w ? storage_writer_close(up->w) : REG_OK;
    if (up->state && result != REG_OK) {
        state_free(up->state);
        up->state = NULL;
    }
    if (up->state) {
        struct registry *reg = up->reg;
        pthread_mutex_lock(&reg->mu);
        /* Another request that opened the session meanwhile made its own state stale. */
        state_drop(reg, up->name, up->id);
        if (reg->nstates >= UPLOAD_STATES_MAX)
            state_evict_oldest(reg);
        up->state->next = reg->states;
        reg->states = up->state;
        reg->nstates++;
        pthread_mutex_unlock(&reg->mu);
    }
    free(up->name);
    free(up);
    return result;
}

enum regerr registry_upload_open(struct registry *reg, const char *name, const char *id,
                                 struct registry_upload **out)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat st;
    enum regerr result = storage_stat(reg->st, layout_upload_data(path, name, id), &st);
    if (result == REG_ERR_NOT_FOUND)
        return REG_ERR_BLOB_UPLOAD_UNKNOWN;
    if (result != REG_OK)
        return result;
    struct registry_upload *up = calloc(1, sizeof(*up));
    if (!up || !(up->name = strdup(name))) {
        free(up);
        return REG_ERR_INTERNAL;
    }
    up->reg = reg;
    snprintf(up->id, sizeof(up->id), "%s", id);
    result = storage_open_writer(reg->st, path, true, &up->w);
    if (result != REG_OK) {
        upload_release(up);
        return result;
    }
    uint64_t size = storage_writer_size(up->w);
    pthread_mutex_lock(&reg->mu);
    up->state = state_find(reg, name, id, true);
    pthread_mutex_unlock(&reg->mu);
    /* A state that missed bytes (written by another node, or before a restart, or evicted)
     * is useless: commit re-hashes what is stored instead. */
    if (up->state && up->state->hashed != size) {
        state_free(up->state);
        up->state = NULL;
    }
    /* An empty session has no past to miss: every byte it gets is hashed as it is written,
     * so a PUT with the whole blob is verified without reading it back, on any node. */
    if (!up->state && size == 0 && !(up->state = state_new(name, id))) {
        upload_release(up);
        return REG_ERR_INTERNAL;
    }
    *out = up;
    return REG_OK;
}

uint64_t registry_upload_offset(const struct registry_upload *up)
{
    return storage_writer_size(up->w);
}

enum regerr registry_upload_write(struct registry_upload *up, const void *data, size_t len)
{
    enum regerr result = storage_writer_write(up->w, data, len);
    if (result != REG_OK)
        return result;
    if (up->state) {
        if (digest_hasher_update(up->state->hasher, data, len) != 0)
            return REG_ERR_INTERNAL;
        up->state->hashed += len;
    }
    return REG_OK;
}

enum regerr registry_upload_close(struct registry_upload *up)
{
    return upload_release(up);
}

enum regerr registry_upload_rewind(struct registry_upload *up, uint64_t offset)
{
    /* The hash state has taken bytes that go now: the commit re-hashes instead. */
    if (up->state) {
        state_free(up->state);
        up->state = NULL;
    }
    return storage_writer_truncate(up->w, offset);
}

static int hash_chunk(void *ctx, const void *data, size_t len)
{
    return digest_hasher_update(ctx, data, len);
}

/* Digest of what an upload holds, from the in-memory state or by reading the data back. */
static enum regerr upload_digest(struct registry_upload *up, enum digest_algo algo,
                                 struct digest *out)
{
    char path[LAYOUT_PATH_MAX];
    enum regerr result = REG_OK;
    struct digest_hasher *h = NULL;
    int fd = -1;
    uint64_t size = 0;
    if (algo == DIGEST_SHA256 && up->state && up->state->hashed == storage_writer_size(up->w)) {
        h = up->state->hasher;
        return digest_hasher_final(h, out) == 0 ? REG_OK : REG_ERR_INTERNAL;
    }
    h = digest_hasher_new(algo);
    if (!h)
        return REG_ERR_INTERNAL;
    layout_upload_data(path, up->name, up->id);
    result = storage_open_read(up->reg->st, path, &fd, &size);
    if (result == REG_ERR_UNSUPPORTED) {
        /* A remote driver: stream the object through the hasher. */
        result = storage_read_range(up->reg->st, path, 0, 0, hash_chunk, h);
        if (result == REG_OK && digest_hasher_final(h, out) != 0)
            result = REG_ERR_INTERNAL;
        goto out;
    }
    if (result != REG_OK)
        goto out;
    char buf[65536];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            result = REG_ERR_INTERNAL;
            goto out;
        }
        if (r == 0)
            break;
        digest_hasher_update(h, buf, (size_t)r);
    }
    if (digest_hasher_final(h, out) != 0)
        result = REG_ERR_INTERNAL;
out:
    digest_hasher_free(h);
    if (fd >= 0)
        close(fd);
    return result;
}

enum regerr registry_upload_commit(struct registry_upload *up, const struct digest *d)
{
    struct registry *reg = up->reg;
    char src[LAYOUT_PATH_MAX], dst[LAYOUT_PATH_MAX];
    struct digest got;
    bool from_state =
        d->algo == DIGEST_SHA256 && up->state && up->state->hashed == storage_writer_size(up->w);
    enum regerr result = from_state ? upload_digest(up, d->algo, &got) : REG_OK;
    /* A finalized hasher cannot take more bytes: forget the state either way. */
    if (up->state) {
        state_free(up->state);
        up->state = NULL;
    }
    enum regerr closed = storage_writer_close(up->w);
    up->w = NULL;
    if (result == REG_OK)
        result = closed;
    /* Re-hashing reads the stored data back: after the close, which on OSS is when the
     * object gets this request's bytes (sha384, sha512, or a state lost to a restart). */
    if (result == REG_OK && !from_state)
        result = upload_digest(up, d->algo, &got);
    if (result != REG_OK)
        goto out;
    layout_upload_data(src, up->name, up->id);
    if (!digest_equal(&got, d)) {
        result = REG_ERR_DIGEST_INVALID;
        goto out;
    }
    struct storage_stat st;
    if (storage_stat(reg->st, layout_blob_data(dst, d), &st) == REG_OK) {
        /* Same digest, same bytes: keep the stored copy. */
        result = REG_OK;
    } else {
        result = storage_move(reg->st, src, dst);
    }
    if (result != REG_OK)
        goto out;
    result = write_link(reg, layout_layer_link(dst, up->name, d), d);
    if (result != REG_OK)
        goto out;
    storage_remove(reg->st, layout_upload_dir(src, up->name, up->id));
out:
    upload_release(up);
    return result;
}

enum regerr registry_upload_cancel(struct registry *reg, const char *name, const char *id)
{
    char path[LAYOUT_PATH_MAX];
    pthread_mutex_lock(&reg->mu);
    state_drop(reg, name, id);
    pthread_mutex_unlock(&reg->mu);
    enum regerr result = storage_remove(reg->st, layout_upload_dir(path, name, id));
    return result == REG_ERR_NOT_FOUND ? REG_ERR_BLOB_UPLOAD_UNKNOWN : result;
}

/* ---- manifests ---- */

void registry_manifest_release(struct registry_manifest *m)
{
    free(m->body);
    m->body = NULL;
}

/*
 * ---- the manifest cache ----
 * Content by digest never changes, so a manifest read once (or stored) is kept in memory and
 * served without touching storage. Only content is cached: whether name has the manifest (its
 * revision link) and where a tag points are read from storage on every request, because
 * deletes must take effect and other instances may share the storage.
 */

static size_t mcache_bucket(const struct digest *d)
{
    size_t h = 0;
    /* hex digits of a digest are uniformly distributed: a few are a good hash */
    for (size_t i = 0; i < 8 && d->hex[i]; i++)
        h = h * 16 + (size_t)(d->hex[i] <= '9' ? d->hex[i] - '0' : d->hex[i] - 'a' + 10);
    return (h + (size_t)d->algo) % MCACHE_BUCKETS;
}

static size_t mcache_cost(const struct mcache_entry *e)
{
    return sizeof(*e) + e->len;
}

static void mcache_unlink(struct registry *reg, struct mcache_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        reg->mhead = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        reg->mtail = e->prev;
    e->prev = e->next = NULL;
}

static void mcache_push_front(struct registry *reg, struct mcache_entry *e)
{
    e->prev = NULL;
    e->next = reg->mhead;
    if (reg->mhead)
        reg->mhead->prev = e;
    reg->mhead = e;
    if (!reg->mtail)
        reg->mtail = e;
}

static void mcache_evict(struct registry *reg, struct mcache_entry *e)
{
    struct mcache_entry **p = &reg->mbuckets[mcache_bucket(&e->digest)];
    while (*p != e)
        p = &(*p)->hnext;
    *p = e->hnext;
    mcache_unlink(reg, e);
    reg->mbytes -= mcache_cost(e);
    free(e);
}

static struct mcache_entry *mcache_find(struct registry *reg, const struct digest *d)
{
    for (struct mcache_entry *e = reg->mbuckets[mcache_bucket(d)]; e; e = e->hnext) {
        if (digest_equal(&e->digest, d)) {
            mcache_unlink(reg, e);
            mcache_push_front(reg, e);
            return e;
        }
    }
    return NULL;
}

/* Keeps a copy of a manifest the caller verified to have digest d (or read back as d). */
static void mcache_put(struct registry *reg, const struct digest *d, const char *body, size_t len,
                       const char *media_type)
{
    if (len > MCACHE_ENTRY_MAX || mcache_find(reg, d))
        return;
    struct mcache_entry *e = malloc(sizeof(*e) + len);
    if (!e)
        return;
    memset(e, 0, sizeof(*e));
    e->digest = *d;
    snprintf(e->media_type, sizeof(e->media_type), "%s", media_type);
    e->len = len;
    memcpy(e->body, body, len);
    while (reg->mtail && reg->mbytes + mcache_cost(e) > MCACHE_BYTES)
        mcache_evict(reg, reg->mtail);
    size_t b = mcache_bucket(d);
    e->hnext = reg->mbuckets[b];
    reg->mbuckets[b] = e;
    mcache_push_front(reg, e);
    reg->mbytes += mcache_cost(e);
}

/* Resolves ref (tag or digest) to a manifest digest linked in name. */
static enum regerr resolve(struct registry *reg, const char *name, const char *ref,
                           struct digest *out)
{
    char path[LAYOUT_PATH_MAX];
    enum regerr result;
    if (digest_parse(ref, strlen(ref), out) == 0) {
        struct digest linked;
        result = read_link(reg, layout_revision_link(path, name, out), &linked);
    } else {
        result = read_link(reg, layout_tag_current(path, name, ref), out);
    }
    return result == REG_ERR_NOT_FOUND ? REG_ERR_MANIFEST_UNKNOWN : result;
}

enum regerr registry_manifest_resolve(struct registry *reg, const char *name, const char *ref,
                                      struct digest *out)
{
    return resolve(reg, name, ref, out);
}

static enum regerr media_type_of(const char *body, size_t len, char *buf, size_t size)
{
    struct manifest m;
    char err[256];
    enum regerr result = manifest_parse(body, len, NULL, &m, err, sizeof(err));
    if (result != REG_OK) {
        log_error("registry: stored manifest does not parse: %s", err);
        return REG_ERR_INTERNAL;
    }
    snprintf(buf, size, "%s", m.media_type);
    manifest_free(&m);
    return REG_OK;
}

enum regerr registry_manifest_get_resolved(struct registry *reg, const struct digest *d,
                                           struct registry_manifest *out)
{
    char path[LAYOUT_PATH_MAX];
    memset(out, 0, sizeof(*out));
    out->digest = *d;
    pthread_mutex_lock(&reg->mu);
    const struct mcache_entry *e = mcache_find(reg, d);
    if (e) {
        /* a copy: the caller owns the body, and the entry may be evicted meanwhile */
        out->body = malloc(e->len + 1);
        if (out->body) {
            memcpy(out->body, e->body, e->len);
            out->body[e->len] = '\0';
            out->len = e->len;
            snprintf(out->media_type, sizeof(out->media_type), "%s", e->media_type);
        }
    }
    pthread_mutex_unlock(&reg->mu);
    if (e)
        return out->body ? REG_OK : REG_ERR_INTERNAL;
    enum regerr result = storage_get_content(reg->st, layout_blob_data(path, d),
                                             REGISTRY_MANIFEST_MAX, &out->body, &out->len);
    if (result == REG_ERR_NOT_FOUND)
        return REG_ERR_MANIFEST_UNKNOWN;
    if (result == REG_OK)
        result = media_type_of(out->body, out->len, out->media_type, sizeof(out->media_type));
    if (result != REG_OK) {
        registry_manifest_release(out);
        return result;
    }
    /* Only bytes that hash to d are kept: a damaged file must not outlive a repair. */
    struct digest got;
    if (digest_compute(d->algo, out->body, out->len, &got) == 0 && digest_equal(&got, d)) {
        pthread_mutex_lock(&reg->mu);
        mcache_put(reg, d, out->body, out->len, out->media_type);
        pthread_mutex_unlock(&reg->mu);
    }
    return REG_OK;
}

enum regerr registry_manifest_get(struct registry *reg, const char *name, const char *ref,
                                  struct registry_manifest *out)
{
    struct digest d;
    memset(out, 0, sizeof(*out));
    enum regerr result = resolve(reg, name, ref, &d);
    if (result != REG_OK)
        return result;
    return registry_manifest_get_resolved(reg, &d, out);
}

/* Whether a layer may name url (see struct registry_url_policy). */
static bool url_allowed(const struct registry *reg, const char *url)
{
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return false;
    for (const char *p = url; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '#')
            return false;
    }
    if (!reg->url_check)
        return true;
    if (reg->nurl_allow == 0 && reg->nurl_deny == 0)
        return false;
    bool allowed = reg->nurl_allow == 0;
    for (size_t i = 0; i < reg->nurl_allow && !allowed; i++)
        allowed = regexec(&reg->url_allow[i], url, 0, NULL, 0) == 0;
    for (size_t i = 0; i < reg->nurl_deny && allowed; i++)
        allowed = regexec(&reg->url_deny[i], url, 0, NULL, 0) != 0;
    return allowed;
}

/*
 * Layers clients fetch from their urls need not be stored, as in registry:2 2.8: a Docker
 * foreign layer (which must have urls), an OCI layer (tar or tar+gzip, distributable or not)
 * with urls. Their urls must be allowed. *skip: do not look for the blob.
 */
static bool layer_urls_ok(const struct registry *reg, enum manifest_kind kind,
                          const struct manifest_desc *l, bool *skip, char *errbuf, size_t errlen)
{
    static const char foreign[] = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    static const char *const oci[] = {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    };
    char ds[DIGEST_STR_MAX];
    bool checked = false;
    *skip = false;
    if (kind == MANIFEST_DOCKER_V2 && strcmp(l->media_type, foreign) == 0) {
        if (l->nurls == 0) {
            snprintf(errbuf, errlen, "foreign layer %s has no urls", digest_str(&l->digest, ds));
            return false;
        }
        checked = *skip = true;
    }
    for (size_t i = 0; kind == MANIFEST_OCI && i < sizeof(oci) / sizeof(*oci); i++) {
        if (strcmp(l->media_type, oci[i]) == 0) {
            checked = true;
            *skip = l->nurls > 0;
        }
    }
    for (size_t i = 0; checked && i < l->nurls; i++) {
        if (!url_allowed(reg, l->urls[i])) {
            snprintf(errbuf, errlen,
                     "layer %s: url not allowed (validation.manifests.urls): %.200s",
                     digest_str(&l->digest, ds), l->urls[i]);
            return false;
        }
    }
    return true;
}

/* Every blob and child manifest the manifest references must be in the repository, but for
 * the layers layer_urls_ok lets clients fetch elsewhere. */
static enum regerr check_references(struct registry *reg, const char *name,
                                    const struct manifest *m, char *errbuf, size_t errlen)
{
    char path[LAYOUT_PATH_MAX];
    char ds[DIGEST_STR_MAX];
    bool index = m->kind == MANIFEST_OCI_INDEX || m->kind == MANIFEST_DOCKER_LIST;
    uint64_t size;
    if (m->has_config && registry_blob_stat(reg, name, &m->config.digest, &size) != REG_OK) {
        snprintf(errbuf, errlen, "config blob %s unknown", digest_str(&m->config.digest, ds));
        return REG_ERR_MANIFEST_BLOB_UNKNOWN;
    }
    for (size_t i = 0; i < m->nlayers; i++) {
        const struct digest *d = &m->layers[i].digest;
        bool skip = false;
        if (!index && !layer_urls_ok(reg, m->kind, &m->layers[i], &skip, errbuf, errlen))
            return REG_ERR_MANIFEST_BLOB_UNKNOWN;
        if (skip)
            continue;
        bool ok = index ? path_exists(reg, layout_revision_link(path, name, d))
                        : registry_blob_stat(reg, name, d, &size) == REG_OK;
        if (!ok) {
            snprintf(errbuf, errlen, "%s %s unknown", index ? "manifest" : "blob",
                     digest_str(d, ds));
            return REG_ERR_MANIFEST_BLOB_UNKNOWN;
        }
    }
    return REG_OK;
}

enum regerr registry_manifest_store(struct registry *reg, const char *name, const char *tag,
                                    const char *body, size_t len, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat st;
    enum regerr result = REG_OK;
    if (storage_stat(reg->st, layout_blob_data(path, d), &st) != REG_OK) {
        result = storage_put_content(reg->st, path, body, len);
        if (result != REG_OK)
            return result;
    }
    result = write_link(reg, layout_revision_link(path, name, d), d);
    if (result != REG_OK || !tag)
        return result;
    result = write_link(reg, layout_tag_index_link(path, name, tag, d), d);
    if (result == REG_OK)
        result = write_link(reg, layout_tag_current(path, name, tag), d);
    return result;
}

enum regerr registry_manifest_put(struct registry *reg, const char *name, const char *ref,
                                  const char *body, size_t len, const char *content_type,
                                  struct digest *digest_out, bool *has_subject,
                                  struct digest *subject_out, char *errbuf, size_t errlen)
{
    char path[LAYOUT_PATH_MAX];
    struct manifest m;
    struct digest by_ref;
    bool is_digest = digest_parse(ref, strlen(ref), &by_ref) == 0;
    enum regerr result = manifest_parse(body, len, content_type, &m, errbuf, errlen);
    if (result != REG_OK)
        return result;
    if (digest_compute(is_digest ? by_ref.algo : DIGEST_SHA256, body, len, digest_out) != 0) {
        result = REG_ERR_INTERNAL;
        goto out;
    }
    if (is_digest && !digest_equal(digest_out, &by_ref)) {
        snprintf(errbuf, errlen, "manifest digest does not match %s", ref);
        result = REG_ERR_DIGEST_INVALID;
        goto out;
    }
    result = check_references(reg, name, &m, errbuf, errlen);
    if (result != REG_OK)
        goto out;
    result = registry_manifest_store(reg, name, is_digest ? NULL : ref, body, len, digest_out);
    if (result != REG_OK)
        goto out;
    /* A push makes the tag local: the pull-through cache leaves it alone from now on. */
    if (!is_digest)
        storage_remove(reg->st, layout_proxy_tag(path, name, ref));
    *has_subject = m.has_subject;
    if (m.has_subject)
        *subject_out = m.subject.digest;
out:
    manifest_free(&m);
    return result;
}

static enum regerr untag(struct registry *reg, const char *name, const char *tag)
{
    char path[LAYOUT_PATH_MAX];
    enum regerr result = storage_remove(reg->st, layout_tag_dir(path, name, tag));
    return result == REG_ERR_NOT_FOUND ? REG_ERR_MANIFEST_UNKNOWN : result;
}

enum regerr registry_manifest_delete(struct registry *reg, const char *name, const char *ref)
{
    char path[LAYOUT_PATH_MAX];
    struct digest d;
    if (digest_parse(ref, strlen(ref), &d) != 0)
        return untag(reg, name, ref);
    layout_revision_link(path, name, &d);
    if (!path_exists(reg, path))
        return REG_ERR_MANIFEST_UNKNOWN;
    /* Tags first: a crash in between leaves a revision without tags, never a dangling tag. */
    struct storage_list tags = {0};
    if (storage_list(reg->st, layout_tags_dir(path, name), &tags) == REG_OK) {
        for (size_t i = 0; i < tags.n; i++) {
            struct digest cur;
            if (read_link(reg, layout_tag_current(path, name, tags.names[i]), &cur) == REG_OK &&
                digest_equal(&cur, &d))
                untag(reg, name, tags.names[i]);
        }
        storage_list_free(&tags);
    }
    layout_revision_link(path, name, &d);
    *strrchr(path, '/') = '\0';
    enum regerr result = storage_remove(reg->st, path);
    return result == REG_ERR_NOT_FOUND ? REG_ERR_MANIFEST_UNKNOWN : result;
}

/* ---- the pull-through cache's own records ---- */

bool registry_proxy_tag_checked(struct registry *reg, const char *name, const char *tag,
                                time_t *checked)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat st;
    if (storage_stat(reg->st, layout_proxy_tag(path, name, tag), &st) != REG_OK)
        return false;
    *checked = st.mtime;
    return true;
}

enum regerr registry_proxy_tag_touch(struct registry *reg, const char *name, const char *tag)
{
    char path[LAYOUT_PATH_MAX];
    /* The marker's mtime is the check time: rewriting it is one small atomic write. */
    return storage_put_content(reg->st, layout_proxy_tag(path, name, tag), "", 0);
}

enum regerr registry_proxy_tag_set(struct registry *reg, const char *name, const char *tag,
                                   const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    /* Marker first: a crash in between leaves a proxied tag that is re-checked, never a
     * local-looking one that the proxy would no longer refresh. */
    enum regerr result = registry_proxy_tag_touch(reg, name, tag);
    if (result == REG_OK)
        result = write_link(reg, layout_tag_index_link(path, name, tag, d), d);
    if (result == REG_OK)
        result = write_link(reg, layout_tag_current(path, name, tag), d);
    return result;
}

enum regerr registry_proxy_pulled(struct registry *reg, const char *name, const struct digest *d,
                                  bool create)
{
    char path[LAYOUT_PATH_MAX];
    layout_proxy_pulled(path, name, d);
    if (!create && !path_exists(reg, path))
        return REG_OK;
    return storage_put_content(reg->st, path, "", 0);
}

bool registry_blob_stored(struct registry *reg, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    return path_exists(reg, layout_blob_data(path, d));
}

enum regerr registry_blob_link(struct registry *reg, const char *name, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    return write_link(reg, layout_layer_link(path, name, d), d);
}

enum regerr registry_blob_import(struct registry *reg, const char *name, const struct digest *d,
                                 int fd, uint64_t len)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat st;
    if (storage_stat(reg->st, layout_blob_data(path, d), &st) == REG_OK)
        goto link; /* same digest, same bytes */
    struct storage_writer *w;
    enum regerr result = storage_open_writer(reg->st, path, false, &w);
    if (result != REG_OK)
        return result;
    static const size_t chunk = 1u << 20;
    char *buf = malloc(chunk);
    uint64_t off = 0;
    if (!buf)
        result = REG_ERR_INTERNAL;
    while (result == REG_OK && off < len) {
        size_t want = len - off < chunk ? (size_t)(len - off) : chunk;
        ssize_t r = pread(fd, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            log_error("registry: reading the spool of %s failed: %s", path,
                      r < 0 ? strerror(errno) : "short file");
            result = REG_ERR_INTERNAL;
            break;
        }
        result = storage_writer_write(w, buf, (size_t)r);
        off += (uint64_t)r;
    }
    free(buf);
    enum regerr closed = storage_writer_close(w);
    if (result == REG_OK)
        result = closed;
    if (result != REG_OK)
        return result;
link:
    return write_link(reg, layout_layer_link(path, name, d), d);
}

enum regerr registry_upload_reader(struct registry *reg, const char *name, const char *id, int *fd)
{
    char path[LAYOUT_PATH_MAX];
    uint64_t size;
    enum regerr result = storage_open_read(reg->st, layout_upload_data(path, name, id), fd, &size);
    return result == REG_ERR_NOT_FOUND ? REG_ERR_BLOB_UPLOAD_UNKNOWN : result;
}

/* ---- discovery ---- */

enum regerr registry_tags(struct registry *reg, const char *name, struct storage_list *out)
{
    char path[LAYOUT_PATH_MAX];
    enum regerr result = storage_list(reg->st, layout_tags_dir(path, name), out);
    if (result == REG_ERR_NOT_FOUND) {
        /* A repository with manifests but no tags left exists and has an empty list. */
        char mpath[LAYOUT_PATH_MAX];
        snprintf(mpath, sizeof(mpath), "%s/_manifests", layout_repo(path, name));
        if (path_exists(reg, mpath)) {
            *out = (struct storage_list){0};
            return REG_OK;
        }
        return REG_ERR_NAME_UNKNOWN;
    }
    return result;
}

struct name_vec {
    char **v;
    size_t n, cap;
};

static int vec_push(struct name_vec *vec, const char *s)
{
    /* bounded by the repositories in the store */
    if (buf_grow_items(&vec->v, &vec->cap, vec->n + 1, sizeof(*vec->v),
                       BUF_UNCAPPED / sizeof(*vec->v)) != BUF_OK)
        return -1;
    if (!(vec->v[vec->n] = strdup(s)))
        return -1;
    vec->n++;
    return 0;
}

/* Repository names can nest 128 levels at most within 255 characters; stop well before. */
#define CATALOG_DEPTH_MAX 64

static enum regerr walk_repos(struct registry *reg, const char *dir, const char *prefix, int depth,
                              struct name_vec *vec)
{
    struct storage_list l = {0};
    enum regerr result = storage_list(reg->st, dir, &l);
    if (result == REG_ERR_NOT_FOUND)
        return REG_OK;
    if (result != REG_OK)
        return result;
    for (size_t i = 0; i < l.n && result == REG_OK; i++) {
        const char *e = l.names[i];
        if (strcmp(e, "_manifests") == 0 && *prefix) {
            if (vec_push(vec, prefix) != 0)
                result = REG_ERR_INTERNAL;
            continue;
        }
        if (e[0] == '_' || depth >= CATALOG_DEPTH_MAX)
            continue;
        char sub[LAYOUT_PATH_MAX], name[LAYOUT_PATH_MAX];
        snprintf(sub, sizeof(sub), "%s/%s", dir, e);
        snprintf(name, sizeof(name), "%s%s%s", prefix, *prefix ? "/" : "", e);
        struct storage_stat st;
        if (storage_stat(reg->st, sub, &st) == REG_OK && st.is_dir)
            result = walk_repos(reg, sub, name, depth + 1, vec);
    }
    storage_list_free(&l);
    return result;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

enum regerr registry_catalog(struct registry *reg, struct storage_list *out)
{
    char path[LAYOUT_PATH_MAX];
    struct name_vec vec = {0};
    enum regerr result = walk_repos(reg, layout_repositories(path), "", 0, &vec);
    if (result != REG_OK) {
        struct storage_list l = {vec.v, vec.n};
        storage_list_free(&l);
        return result;
    }
    if (vec.n)
        qsort(vec.v, vec.n, sizeof(*vec.v), cmp_name);
    out->names = vec.v;
    out->n = vec.n;
    return REG_OK;
}

static json_t *referrer_descriptor(const struct manifest *m, const struct digest *d, size_t len)
{
    char ds[DIGEST_STR_MAX];
    json_t *desc = json_pack("{s:s, s:s, s:I}", "mediaType", m->media_type, "digest",
                             digest_str(d, ds), "size", (json_int_t)len);
    if (!desc)
        return NULL;
    if (m->artifact_type)
        json_object_set_new(desc, "artifactType", json_string(m->artifact_type));
    if (m->annotations_json) {
        json_t *ann = json_loads(m->annotations_json, 0, NULL);
        if (ann)
            json_object_set_new(desc, "annotations", ann);
    }
    return desc;
}

enum regerr registry_referrers(struct registry *reg, const char *name, const struct digest *subject,
                               const char *artifact_type, json_t **out)
{
    char path[LAYOUT_PATH_MAX];
    enum regerr result = REG_OK;
    struct storage_list revs = {0};
    json_t *list = json_array();
    json_t *index = json_pack("{s:i, s:s, s:o}", "schemaVersion", 2, "mediaType",
                              MANIFEST_MT_OCI_INDEX, "manifests", list);
    if (!index)
        return REG_ERR_INTERNAL;
    /* Every algorithm directory: the subject may be referred to by sha384 or sha512
     * manifests too. */
    for (int algo = DIGEST_SHA256; algo <= DIGEST_SHA512; algo++) {
        enum regerr lr = storage_list(reg->st, layout_revisions_dir(path, name, algo), &revs);
        if (lr == REG_ERR_NOT_FOUND)
            continue;
        if (lr != REG_OK) {
            result = lr;
            goto out;
        }
        for (size_t i = 0; i < revs.n; i++) {
            char ref[DIGEST_STR_MAX];
            snprintf(ref, sizeof(ref), "%s:%s", digest_algo_name(algo), revs.names[i]);
            struct registry_manifest rm;
            if (registry_manifest_get(reg, name, ref, &rm) != REG_OK)
                continue;
            struct manifest m;
            char err[64];
            if (manifest_parse(rm.body, rm.len, NULL, &m, err, sizeof(err)) == REG_OK) {
                bool match = m.has_subject && digest_equal(&m.subject.digest, subject) &&
                             (!artifact_type ||
                              (m.artifact_type && strcmp(m.artifact_type, artifact_type) == 0));
                json_t *desc = match ? referrer_descriptor(&m, &rm.digest, rm.len) : NULL;
                if (desc)
                    json_array_append_new(list, desc);
                manifest_free(&m);
            }
            registry_manifest_release(&rm);
        }
        storage_list_free(&revs);
    }
    *out = index;
    index = NULL;
out:
    storage_list_free(&revs);
    json_decref(index);
    return result;
}
