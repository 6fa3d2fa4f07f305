/* The cache admin routes of the debug listener: listing, purge, verify, warm. */
#include "admin.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "auth.h"
#include "buf.h"
#include "cache.h"
#include "gc.h"
#include "inventory.h"
#include "offload.h"
#include "proxy.h"
#include "reference.h"

#define ADMIN_PAGE_DEFAULT 100
#define ADMIN_PAGE_MAX 1000
/* A warm's request body: a list of references. */
#define ADMIN_WARM_BODY_MAX (256 * 1024)
/* References in one warm, and platforms named per reference. */
#define ADMIN_WARM_REFS_MAX 256
#define ADMIN_WARM_PLATFORMS_MAX 16
/* A verify and a warm (one of each at most) and two more for listings and purges. */
#define ADMIN_THREADS 4

struct admin {
    const struct api *api;
    struct auth *auth;
    struct storage *st;
    struct offload *pool; /* ADMIN_THREADS: admin jobs run off the loop */
    atomic_bool stop;     /* admin_free: a warm in progress ends at its next read */
    pthread_mutex_t mu;   /* guards warm and verify (written by the worker, read anywhere) */
    struct admin_progress warm, verify;
};

/* ---- pull counts ---- */

#define PULLS_SLOTS 65536 /* a power of two */
static struct {
    uint64_t key, count;
} pull_table[PULLS_SLOTS];
static pthread_mutex_t pulls_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t pulls_key(const char *name, const struct digest *d)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *c = name; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    h = (h ^ '@') * 1099511628211ull;
    for (const char *c = d->hex; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return h | 1; /* 0 marks a free slot */
}

/* The slot of key, or a free one for it; NULL when the table is full. */
static size_t pulls_slot(uint64_t key, bool *found)
{
    size_t i = key & (PULLS_SLOTS - 1);
    for (size_t probe = 0; probe < PULLS_SLOTS; probe++, i = (i + 1) & (PULLS_SLOTS - 1)) {
        if (pull_table[i].key == key || pull_table[i].key == 0) {
            *found = pull_table[i].key == key;
            return i;
        }
    }
    *found = false;
    return PULLS_SLOTS;
}

void admin_note_pull(const char *name, const struct digest *d)
{
    uint64_t key = pulls_key(name, d);
    bool found;
    pthread_mutex_lock(&pulls_mu);
    size_t i = pulls_slot(key, &found);
    if (i < PULLS_SLOTS) {
        pull_table[i].key = key;
        pull_table[i].count++;
    }
    pthread_mutex_unlock(&pulls_mu);
}

uint64_t admin_pulls(const char *name, const struct digest *d)
{
    bool found;
    pthread_mutex_lock(&pulls_mu);
    size_t i = pulls_slot(pulls_key(name, d), &found);
    uint64_t n = found ? pull_table[i].count : 0;
    pthread_mutex_unlock(&pulls_mu);
    return n;
}

/* ---- references ---- */

enum regerr admin_ref_parse(const char *s, size_t len, char *name, char *ref, const char **why)
{
    const char *at = memchr(s, '@', len);
    const char *slash = memrchr(s, '/', len);
    const char *from = slash ? slash : s;
    const char *colon = at ? NULL : memrchr(from, ':', len - (size_t)(from - s));
    const char *sep = at ? at : colon;
    if (!sep) {
        *why = "the reference names no tag (<name>:<tag>) or digest (<name>@<digest>)";
        return REG_ERR_TAG_INVALID;
    }
    size_t nlen = (size_t)(sep - s), rlen = len - nlen - 1;
    if (nlen == 0 || nlen >= API_NAME_MAX || !reference_name_valid(s, nlen)) {
        *why = "the repository name is not valid";
        return REG_ERR_NAME_INVALID;
    }
    if (at) {
        int rc = rlen < API_REF_MAX ? digest_parse(sep + 1, rlen, NULL) : -1;
        if (rc != 0) {
            *why = rc == -2 ? "the digest's algorithm is not supported" : "not a valid digest";
            return REG_ERR_DIGEST_INVALID;
        }
    } else if (rlen == 0 || rlen >= API_REF_MAX || !reference_tag_valid(sep + 1, rlen)) {
        *why = "the tag is not valid";
        return REG_ERR_TAG_INVALID;
    }
    memcpy(name, s, nlen);
    name[nlen] = '\0';
    memcpy(ref, sep + 1, rlen);
    ref[rlen] = '\0';
    return REG_OK;
}

/* ---- answers ---- */

/* A 200 with body (the reference is taken) and, when not NULL, a Link header. */
static void answer_json_link(struct admin *adm, struct http_req *req, json_t *body,
                             const char *link)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        api_error(adm->api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    api_start(adm->api, req, 200);
    if (link)
        http_resp_header(req, "Link", link);
    http_resp_header(req, "Content-Type", "application/json");
    http_resp_body_mem(req, text, strlen(text));
    free(text);
}

static void answer_json(struct admin *adm, struct http_req *req, json_t *body)
{
    answer_json_link(adm, req, body, NULL);
}

static void method_not_allowed(struct http_req *req, const char *allow)
{
    http_resp_start(req, 405);
    http_resp_header(req, "Allow", allow);
    http_resp_no_body(req, -1);
}

static json_t *time_json(time_t t)
{
    char buf[32];
    struct tm tm;
    if (!t || !gmtime_r(&t, &tm))
        return json_null();
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

static json_t *progress_json(const struct admin_progress *p)
{
    return json_pack("{s:b, s:o, s:o, s:I, s:I, s:I, s:I, s:s}", "running", p->running, "started",
                     time_json(p->started), "finished", time_json(p->finished), "done",
                     (json_int_t)p->done, "total", (json_int_t)p->total, "bytes",
                     (json_int_t)p->bytes, "errors", (json_int_t)p->errors, "current", p->current);
}

static void progress_get(struct admin *adm, const struct admin_progress *p,
                         struct admin_progress *out)
{
    pthread_mutex_lock(&adm->mu);
    *out = *p;
    pthread_mutex_unlock(&adm->mu);
}

void admin_warm_progress(struct admin *adm, struct admin_progress *out)
{
    progress_get(adm, &adm->warm, out);
}

void admin_verify_progress(struct admin *adm, struct admin_progress *out)
{
    progress_get(adm, &adm->verify, out);
}

static void serve_progress(struct admin *adm, struct http_req *req, const struct admin_progress *p)
{
    struct admin_progress copy;
    progress_get(adm, p, &copy);
    answer_json(adm, req, progress_json(&copy));
}

/* Starts p unless it runs already (then false). */
static bool progress_begin(struct admin *adm, struct admin_progress *p)
{
    bool ok;
    pthread_mutex_lock(&adm->mu);
    ok = !p->running;
    if (ok) {
        memset(p, 0, sizeof(*p));
        p->running = true;
        p->started = time(NULL);
    }
    pthread_mutex_unlock(&adm->mu);
    return ok;
}

static void progress_end(struct admin *adm, struct admin_progress *p)
{
    pthread_mutex_lock(&adm->mu);
    p->running = false;
    p->finished = time(NULL);
    p->current[0] = '\0';
    pthread_mutex_unlock(&adm->mu);
}

/* ---- GET /admin/cache ---- */

struct ls_job {
    struct admin *adm;
    char repo[API_NAME_MAX]; /* "" : every repository, paged */
    char last[API_NAME_MAX];
    uint64_t n;
    enum regerr result;
    json_t *body;
    char next[API_NAME_MAX]; /* "" : no further page */
};

static json_t *image_json(const struct config *cfg, const char *name,
                          const struct inventory_image *img, bool pulls)
{
    char ds[DIGEST_STR_MAX];
    const char *up = img->local ? NULL : inventory_upstream(cfg, name);
    json_t *o = json_pack("{s:s, s:I, s:s, s:o}", "digest", digest_str(&img->digest, ds), "size",
                          (json_int_t)img->size, "source", img->local ? "pushed" : "proxied",
                          "last_pulled", time_json(img->last_pulled));
    if (o && img->tag[0])
        json_object_set_new(o, "tag", json_string(img->tag));
    if (o && up)
        json_object_set_new(o, "upstream", json_string(up));
    if (o && pulls) {
        uint64_t count = 0;
        for (size_t i = 0; i < img->nmanifests; i++)
            count += admin_pulls(name, &img->manifests[i]);
        json_object_set_new(o, "pulls", json_integer((json_int_t)count));
    }
    return o;
}

json_t *admin_repo_json(const struct config *cfg, const char *name, const struct inventory_repo *r,
                        bool pulls)
{
    json_t *images = json_array();
    uint64_t total = 0;
    for (size_t i = 0; i < r->n; i++) {
        json_array_append_new(images, image_json(cfg, name, &r->images[i], pulls));
        total += r->images[i].size;
    }
    return json_pack("{s:s, s:I, s:o}", "name", name, "size", (json_int_t)total, "images", images);
}

/* Appends repository name to arr; REG_OK also when it holds nothing any more. */
static enum regerr ls_repo(struct ls_job *j, const char *name, json_t *arr)
{
    struct inventory_repo r;
    enum regerr result = inventory_repo_read(j->adm->st, name, &r);
    if (result != REG_OK)
        return result;
    json_array_append_new(arr, admin_repo_json(j->adm->api->cfg, name, &r, true));
    inventory_repo_free(&r);
    return REG_OK;
}

static void ls_work(void *arg)
{
    struct ls_job *j = arg;
    json_t *arr = json_array();
    if (j->repo[0]) {
        j->result = ls_repo(j, j->repo, arr);
        goto out;
    }
    struct storage_list l = {0};
    j->result = registry_catalog(j->adm->api->reg, &l);
    uint64_t listed = 0;
    for (size_t i = 0; i < l.n && j->result == REG_OK; i++) {
        if (j->last[0] && strcmp(l.names[i], j->last) <= 0)
            continue;
        if (listed == j->n) {
            /* the page is full and more follow: the next starts after the last listed */
            if (listed)
                snprintf(j->next, sizeof(j->next), "%s", l.names[i - 1]);
            break;
        }
        enum regerr r = ls_repo(j, l.names[i], arr);
        if (r == REG_OK)
            listed++;
        else if (r != REG_ERR_NAME_UNKNOWN) /* gone meanwhile */
            j->result = r;
    }
    storage_list_free(&l);
out:
    j->body = json_pack("{s:o}", "repositories", arr);
}

static void ls_done(void *arg, struct http_req *req)
{
    struct ls_job *j = arg;
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        api_errorf(j->adm->api, req, j->result, "%s", j->repo[0] ? j->repo : "the catalog");
        goto out;
    }
    char *link = NULL;
    if (j->next[0]) {
        char *enc = reference_url_encode(j->next);
        if (enc && asprintf(&link, "<%s?n=%llu&last=%s>; rel=\"next\"", ADMIN_PATH,
                            (unsigned long long)j->n, enc) < 0)
            link = NULL;
        free(enc);
    }
    answer_json_link(j->adm, req, j->body, link);
    j->body = NULL;
    free(link);
out:
    json_decref(j->body);
    free(j);
}

/* The query's value of key, checked as a repository name into out; false after a 400. */
static bool query_name(struct admin *adm, struct http_req *req, const char *key, char *out)
{
    char *v = NULL;
    int has = reference_query_lookup(http_req_query(req), key, &v);
    bool ok =
        has >= 0 && (!v || !*v || (strlen(v) < API_NAME_MAX && reference_name_valid(v, strlen(v))));
    if (!ok)
        api_errorf(adm->api, req, REG_ERR_NAME_INVALID, "%s= is not a repository name", key);
    else
        snprintf(out, API_NAME_MAX, "%s", v ? v : "");
    free(v);
    return ok;
}

static void serve_ls(struct admin *adm, struct http_req *req)
{
    struct ls_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(adm->api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    j->adm = adm;
    j->n = ADMIN_PAGE_DEFAULT;
    char *nstr = reference_query_get(http_req_query(req), "n");
    bool ok = !nstr || !*nstr || reference_parse_uint(nstr, &j->n) == 0;
    if (!ok)
        api_errorf(adm->api, req, REG_ERR_PAGINATION_NUMBER_INVALID, "n=%s", nstr);
    free(nstr);
    if (!ok || !query_name(adm, req, "repo", j->repo) || !query_name(adm, req, "last", j->last)) {
        free(j);
        return;
    }
    if (j->n > ADMIN_PAGE_MAX)
        j->n = ADMIN_PAGE_MAX;
    offload_req(adm->pool, req, ls_work, ls_done, j);
}

/* ---- DELETE /admin/cache/<ref> ---- */

struct rm_job {
    struct admin *adm;
    char name[API_NAME_MAX], ref[API_REF_MAX];
    bool include_local;
    enum regerr result;
    struct inventory_removed removed;
};

static void rm_work(void *arg)
{
    struct rm_job *j = arg;
    j->result = inventory_purge(j->adm->st, j->name, j->ref, j->include_local, &j->removed);
}

static void rm_done(void *arg, struct http_req *req)
{
    struct rm_job *j = arg;
    const struct api *api = j->adm->api;
    /* Also when the client went: the store changed either way. */
    for (size_t i = 0; api->cache && i < j->removed.n; i++)
        cache_forget(api->cache, j->name, &j->removed.digests[i]);
    proxy_tags_changed(api->proxy);
    if (!req)
        goto out;
    char sep = strchr(j->ref, ':') ? '@' : ':'; /* a digest; tags hold no ':' */
    if (j->result == REG_ERR_DENIED)
        api_errorf(api, req, REG_ERR_DENIED,
                   "%s%c%s was pushed here; ?include-local=true purges it too", j->name, sep,
                   j->ref);
    else if (j->result != REG_OK)
        api_errorf(api, req, j->result, "%s%c%s", j->name, sep, j->ref);
    else
        answer_json(j->adm, req,
                    json_pack("{s:s, s:s, s:I, s:I, s:I}", "name", j->name, "reference", j->ref,
                              "manifests", (json_int_t)j->removed.manifests, "blobs",
                              (json_int_t)j->removed.blobs, "bytes", (json_int_t)j->removed.bytes));
out:
    inventory_removed_free(&j->removed);
    free(j);
}

static bool query_true(struct http_req *req, const char *key)
{
    char *v = reference_query_get(http_req_query(req), key);
    bool yes = v && (strcmp(v, "true") == 0 || strcmp(v, "1") == 0);
    free(v);
    return yes;
}

static void serve_rm(struct admin *adm, struct http_req *req, const char *ref)
{
    struct rm_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(adm->api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    const char *why = "";
    enum regerr result = admin_ref_parse(ref, strlen(ref), j->name, j->ref, &why);
    if (result != REG_OK) {
        api_errorf(adm->api, req, result, "%s: %s", ref, why);
        free(j);
        return;
    }
    j->adm = adm;
    j->include_local = query_true(req, "include-local");
    offload_req(adm->pool, req, rm_work, rm_done, j);
}

/* ---- POST /admin/cache/verify ---- */

struct verify_job {
    struct admin *adm;
    char repo[API_NAME_MAX];
    enum regerr result;
    size_t checked;
    struct inventory_removed removed;
};

static void verify_progress(void *ctx, size_t done, size_t total, uint64_t bytes)
{
    struct admin *adm = ctx;
    pthread_mutex_lock(&adm->mu);
    adm->verify.done = done;
    adm->verify.total = total;
    adm->verify.bytes = bytes;
    pthread_mutex_unlock(&adm->mu);
}

static void verify_work(void *arg)
{
    struct verify_job *j = arg;
    j->result = inventory_verify(j->adm->st, j->repo[0] ? j->repo : NULL, verify_progress, j->adm,
                                 &j->adm->stop, &j->checked, &j->removed);
}

static void verify_done(void *arg, struct http_req *req)
{
    struct verify_job *j = arg;
    struct admin *adm = j->adm;
    for (size_t i = 0; adm->api->cache && j->repo[0] && i < j->removed.n; i++)
        cache_forget(adm->api->cache, j->repo, &j->removed.digests[i]);
    pthread_mutex_lock(&adm->mu);
    adm->verify.errors = j->removed.blobs;
    pthread_mutex_unlock(&adm->mu);
    progress_end(adm, &adm->verify);
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        api_error(adm->api, req, j->result, "verify");
        goto out;
    }
    json_t *removed = json_array();
    char ds[DIGEST_STR_MAX];
    for (size_t i = 0; i < j->removed.n; i++)
        json_array_append_new(removed, json_string(digest_str(&j->removed.digests[i], ds)));
    answer_json(adm, req,
                json_pack("{s:I, s:o, s:I}", "checked", (json_int_t)j->checked, "removed", removed,
                          "removed_bytes", (json_int_t)j->removed.bytes));
out:
    inventory_removed_free(&j->removed);
    free(j);
}

static void serve_verify(struct admin *adm, struct http_req *req)
{
    struct verify_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(adm->api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    j->adm = adm;
    if (!query_name(adm, req, "repo", j->repo)) {
        free(j);
        return;
    }
    if (!progress_begin(adm, &adm->verify)) {
        api_error(adm->api, req, REG_ERR_TOOMANYREQUESTS, "a verify is running");
        free(j);
        return;
    }
    offload_req(adm->pool, req, verify_work, verify_done, j);
}

/* ---- POST /admin/cache/warm ---- */

struct warm_ref {
    char name[API_NAME_MAX], ref[API_REF_MAX];
    char *platforms[ADMIN_WARM_PLATFORMS_MAX]; /* "os/arch[/variant]"; none: all */
    size_t nplatforms;
    size_t manifests, blobs; /* blobs: fetched now, or cached already */
    size_t cached;           /* of blobs, linked here before the warm */
    uint64_t bytes;          /* fetched now */
    char error[256];
};

struct warm_job {
    struct admin *adm;
    char base[512];      /* this mirror's main listener: "http://127.0.0.1:5000/prefix" */
    char *authorization; /* the admin request's, for the main listener */
    struct warm_ref *refs;
    size_t nrefs;
    struct gc_set seen; /* blobs fetched by this warm */
    CURL *curl;
};

static void warm_job_free(struct warm_job *j)
{
    for (size_t i = 0; i < j->nrefs; i++) {
        for (size_t k = 0; k < j->refs[i].nplatforms; k++)
            free(j->refs[i].platforms[k]);
    }
    free(j->refs);
    free(j->authorization);
    gc_set_free(&j->seen);
    if (j->curl)
        curl_easy_cleanup(j->curl);
    free(j);
}

struct warm_sink {
    struct admin *adm;
    struct buf *body; /* NULL: the bytes are only counted */
    uint64_t bytes;
};

static size_t warm_write(char *p, size_t size, size_t n, void *ctx)
{
    struct warm_sink *s = ctx;
    size_t len = size * n;
    if (s->body && buf_append(s->body, p, len) != BUF_OK)
        return 0;
    s->bytes += len;
    if (!s->body) {
        pthread_mutex_lock(&s->adm->mu);
        s->adm->warm.bytes += len;
        pthread_mutex_unlock(&s->adm->mu);
    }
    return len;
}

static int warm_xfer(void *ctx, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct warm_sink *s = ctx;
    return atomic_load(&s->adm->stop) ? 1 : 0;
}

/* GET base + /v2/<name>/<kind>/<ref>; the HTTP status, or -1 (err says why). */
static long warm_get(struct warm_job *j, const char *name, const char *kind, const char *ref,
                     struct buf *body, uint64_t *bytes, char *err, size_t errlen)
{
    char url[1024];
    struct warm_sink sink = {j->adm, body, 0};
    struct curl_slist *hdrs = NULL;
    long status = -1;
    snprintf(url, sizeof(url), "%s/v2/%s/%s/%s", j->base, name, kind, ref);
    hdrs = curl_slist_append(hdrs, "Accept: application/vnd.oci.image.index.v1+json, "
                                   "application/vnd.docker.distribution.manifest.list.v2+json, "
                                   "application/vnd.oci.image.manifest.v1+json, "
                                   "application/vnd.docker.distribution.manifest.v2+json");
    if (j->authorization) {
        char line[1024];
        snprintf(line, sizeof(line), "Authorization: %s", j->authorization);
        hdrs = curl_slist_append(hdrs, line);
    }
    curl_easy_setopt(j->curl, CURLOPT_URL, url);
    curl_easy_setopt(j->curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(j->curl, CURLOPT_WRITEFUNCTION, warm_write);
    curl_easy_setopt(j->curl, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(j->curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(j->curl, CURLOPT_XFERINFOFUNCTION, warm_xfer);
    curl_easy_setopt(j->curl, CURLOPT_XFERINFODATA, &sink);
    curl_easy_setopt(j->curl, CURLOPT_SSL_VERIFYPEER, 0L); /* ourselves, over loopback */
    curl_easy_setopt(j->curl, CURLOPT_SSL_VERIFYHOST, 0L);
    /* A 307 to a remote store's signed URL: stored already, nothing to read. */
    curl_easy_setopt(j->curl, CURLOPT_FOLLOWLOCATION, 0L);
    CURLcode rc = curl_easy_perform(j->curl);
    if (rc == CURLE_OK)
        curl_easy_getinfo(j->curl, CURLINFO_RESPONSE_CODE, &status);
    else
        snprintf(err, errlen, "%s", curl_easy_strerror(rc));
    if (status == 307 && !body)
        status = 200;
    else if (status >= 300)
        snprintf(err, errlen, "%s %s: HTTP %ld", kind, ref, status);
    curl_slist_free_all(hdrs);
    *bytes = sink.bytes;
    return status;
}

static bool platform_wanted(const struct warm_ref *r, const json_t *platform)
{
    if (r->nplatforms == 0)
        return true;
    const char *os = json_string_value(json_object_get(platform, "os"));
    const char *arch = json_string_value(json_object_get(platform, "architecture"));
    const char *variant = json_string_value(json_object_get(platform, "variant"));
    char full[160], plain[128];
    snprintf(plain, sizeof(plain), "%s/%s", os ? os : "", arch ? arch : "");
    snprintf(full, sizeof(full), "%s/%s", plain, variant ? variant : "");
    for (size_t i = 0; i < r->nplatforms; i++) {
        if (strcmp(r->platforms[i], plain) == 0 || (variant && strcmp(r->platforms[i], full) == 0))
            return true;
    }
    return false;
}

static void warm_blob(struct warm_job *j, struct warm_ref *r, const char *ds)
{
    struct digest d;
    uint64_t bytes = 0;
    char err[256] = "";
    if (!ds || digest_parse(ds, strlen(ds), &d) != 0 || gc_set_add(&j->seen, &d, NULL) != 1)
        return; /* not a digest, or fetched by this warm already */
    pthread_mutex_lock(&j->adm->mu);
    j->adm->warm.total++;
    pthread_mutex_unlock(&j->adm->mu);
    /* Cached already: reading it back through the listener would only cost a copy. */
    uint64_t size;
    bool cached = registry_blob_stat(j->adm->api->reg, r->name, &d, &size) == REG_OK;
    long status = cached ? 200 : warm_get(j, r->name, "blobs", ds, NULL, &bytes, err, sizeof(err));
    r->cached += cached;
    pthread_mutex_lock(&j->adm->mu);
    j->adm->warm.done++;
    if (status != 200)
        j->adm->warm.errors++;
    pthread_mutex_unlock(&j->adm->mu);
    if (status != 200 && !r->error[0])
        snprintf(r->error, sizeof(r->error), "%s", err);
    r->blobs += status == 200;
    r->bytes += bytes;
}

/* Fetches manifest ref of r (and, for an index, the children r asks for), then the blobs. */
static void warm_manifest(struct warm_job *j, struct warm_ref *r, const char *ref, int depth)
{
    struct buf body = BUF_INIT(REGISTRY_MANIFEST_MAX);
    uint64_t bytes = 0;
    char err[256] = "";
    long status = warm_get(j, r->name, "manifests", ref, &body, &bytes, err, sizeof(err));
    if (status != 200) {
        if (!r->error[0])
            snprintf(r->error, sizeof(r->error), "%s", err);
        buf_free(&body);
        return;
    }
    r->manifests++;
    json_t *m = json_loadb(body.p, body.len, 0, NULL);
    buf_free(&body);
    const json_t *kids = json_object_get(m, "manifests");
    size_t i;
    const json_t *e;
    json_array_foreach(kids, i, e)
    {
        const char *ds = json_string_value(json_object_get(e, "digest"));
        if (ds && depth < 2 && platform_wanted(r, json_object_get(e, "platform")) &&
            !atomic_load(&j->adm->stop))
            warm_manifest(j, r, ds, depth + 1);
    }
    warm_blob(j, r, json_string_value(json_object_get(json_object_get(m, "config"), "digest")));
    json_array_foreach(json_object_get(m, "layers"), i, e)
    {
        if (atomic_load(&j->adm->stop))
            break;
        warm_blob(j, r, json_string_value(json_object_get(e, "digest")));
    }
    json_decref(m);
}

static void warm_work(void *arg)
{
    struct warm_job *j = arg;
    j->curl = curl_easy_init();
    for (size_t i = 0; i < j->nrefs && !atomic_load(&j->adm->stop); i++) {
        struct warm_ref *r = &j->refs[i];
        if (!j->curl) {
            snprintf(r->error, sizeof(r->error), "out of memory");
            continue;
        }
        pthread_mutex_lock(&j->adm->mu);
        snprintf(j->adm->warm.current, sizeof(j->adm->warm.current), "%s%s%s", r->name,
                 strchr(r->ref, ':') ? "@" : ":", r->ref);
        pthread_mutex_unlock(&j->adm->mu);
        warm_manifest(j, r, r->ref, 0);
        if (r->error[0]) {
            pthread_mutex_lock(&j->adm->mu);
            j->adm->warm.errors++;
            pthread_mutex_unlock(&j->adm->mu);
        }
    }
}

static void warm_done(void *arg, struct http_req *req)
{
    struct warm_job *j = arg;
    struct admin *adm = j->adm;
    struct admin_progress p;
    progress_end(adm, &adm->warm);
    if (!req)
        goto out;
    json_t *refs = json_array();
    for (size_t i = 0; i < j->nrefs; i++) {
        const struct warm_ref *r = &j->refs[i];
        json_t *o =
            json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "name", r->name, "reference", r->ref,
                      "manifests", (json_int_t)r->manifests, "blobs", (json_int_t)r->blobs,
                      "cached", (json_int_t)r->cached, "bytes", (json_int_t)r->bytes);
        if (o && r->error[0])
            json_object_set_new(o, "error", json_string(r->error));
        json_array_append_new(refs, o);
    }
    admin_warm_progress(adm, &p);
    json_t *body = progress_json(&p);
    if (body)
        json_object_set_new(body, "references", refs);
    else
        json_decref(refs);
    answer_json(adm, req, body);
out:
    warm_job_free(j);
}

/* One entry of the list: "<ref>" or {"reference": "<ref>", "platforms": ["os/arch", ...]}. */
static enum regerr warm_ref_parse(const json_t *e, struct warm_ref *r, const char **why)
{
    const char *s = json_is_string(e) ? json_string_value(e)
                                      : json_string_value(json_object_get(e, "reference"));
    if (!s) {
        *why = "each entry is a reference or {\"reference\": ..., \"platforms\": [...]}";
        return REG_ERR_NAME_INVALID;
    }
    enum regerr result = admin_ref_parse(s, strlen(s), r->name, r->ref, why);
    if (result != REG_OK)
        return result;
    const json_t *plats = json_object_get(e, "platforms");
    size_t i;
    const json_t *p;
    json_array_foreach(plats, i, p)
    {
        const char *ps = json_string_value(p);
        if (!ps || !strchr(ps, '/') || r->nplatforms == ADMIN_WARM_PLATFORMS_MAX) {
            *why = "platforms are \"os/arch[/variant]\" strings, 16 at most";
            return REG_ERR_NAME_INVALID;
        }
        if (!(r->platforms[r->nplatforms++] = strdup(ps)))
            return REG_ERR_INTERNAL;
    }
    return REG_OK;
}

/* The list of the body into j; REG_OK or the error for a 400, bad (API_NAME_MAX +
 * API_REF_MAX bytes) naming the entry. */
static enum regerr warm_parse(struct warm_job *j, const char *data, size_t len, const char **why,
                              char *bad)
{
    json_t *root = json_loadb(data, len, 0, NULL);
    const json_t *list = json_is_object(root) ? json_object_get(root, "references") : root;
    enum regerr result = REG_OK;
    bad[0] = '\0';
    if (!json_is_array(list) || json_array_size(list) == 0 ||
        json_array_size(list) > ADMIN_WARM_REFS_MAX) {
        *why = "the body is a JSON list of references (256 at most), or {\"references\": [...]}";
        result = REG_ERR_NAME_INVALID;
        goto out;
    }
    j->refs = calloc(json_array_size(list), sizeof(*j->refs));
    if (!j->refs) {
        result = REG_ERR_INTERNAL;
        goto out;
    }
    size_t i;
    const json_t *e;
    json_array_foreach(list, i, e)
    {
        j->nrefs++;
        result = warm_ref_parse(e, &j->refs[i], why);
        if (result != REG_OK) {
            if (json_is_string(e))
                snprintf(bad, API_NAME_MAX + API_REF_MAX, "%s", json_string_value(e));
            break;
        }
    }
out:
    json_decref(root);
    return result;
}

/* The main listener's URL as seen from this host. */
static int warm_base(const struct config *cfg, char *out, size_t len)
{
    const char *addr = cfg->http.addr;
    if (cfg->http.net && strcmp(cfg->http.net, "unix") == 0)
        return -1;
    const char *colon = strrchr(addr, ':');
    if (!colon)
        return -1;
    size_t hl = (size_t)(colon - addr);
    char host[256];
    snprintf(host, sizeof(host), "%.*s", (int)(hl < sizeof(host) ? hl : sizeof(host) - 1), addr);
    if (!host[0] || strcmp(host, "0.0.0.0") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    else if (strcmp(host, "[::]") == 0)
        snprintf(host, sizeof(host), "[::1]");
    bool tls = cfg->http.tls.certificate[0] || cfg->http.tls.letsencrypt.cachefile[0];
    const char *prefix = cfg->http.prefix ? cfg->http.prefix : "";
    size_t pl = strlen(prefix);
    while (pl > 0 && prefix[pl - 1] == '/')
        pl--;
    int n =
        snprintf(out, len, "%s://%s%s%.*s", tls ? "https" : "http", host, colon, (int)pl, prefix);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

static void warm_body(struct http_req *req, void *ctx, const char *data, size_t len)
{
    struct admin *adm = ctx;
    const char *why = "";
    char bad[API_NAME_MAX + API_REF_MAX];
    struct warm_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(adm->api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    j->adm = adm;
    enum regerr result = warm_parse(j, data, len, &why, bad);
    if (result != REG_OK) {
        api_errorf(adm->api, req, result, "%s%s%s", bad, bad[0] ? ": " : "", why);
        warm_job_free(j);
        return;
    }
    if (!adm->api->proxy || warm_base(adm->api->cfg, j->base, sizeof(j->base)) != 0) {
        api_error(adm->api, req, REG_ERR_UNSUPPORTED,
                  "warm needs proxy.remoteurl and a TCP http.addr");
        warm_job_free(j);
        return;
    }
    const char *authz = http_req_header(req, "Authorization");
    if (authz && !(j->authorization = strdup(authz))) {
        api_error(adm->api, req, REG_ERR_INTERNAL, NULL);
        warm_job_free(j);
        return;
    }
    if (!progress_begin(adm, &adm->warm)) {
        api_error(adm->api, req, REG_ERR_TOOMANYREQUESTS, "a warm is running");
        warm_job_free(j);
        return;
    }
    offload_req(adm->pool, req, warm_work, warm_done, j);
}

/* ---- routing ---- */

void admin_serve(struct admin *adm, struct http_req *req)
{
    const char *rest = http_req_path(req) + strlen(ADMIN_PATH);
    enum http_method m = http_req_method(req);
    char user[AUTH_USER_MAX] = "";
    if (adm->auth && !auth_check(adm->auth, http_req_header(req, "Authorization"),
                                 http_req_remote_addr(req), user)) {
        const char *hdrs[] = {"WWW-Authenticate", auth_challenge(adm->auth), NULL};
        api_error_headers(adm->api, req, REG_ERR_UNAUTHORIZED, NULL, hdrs);
        return;
    }
    if (strcmp(rest, "") == 0 || strcmp(rest, "/") == 0) {
        if (m == HTTP_GET)
            serve_ls(adm, req);
        else
            method_not_allowed(req, "GET");
    } else if (strcmp(rest, "/verify") == 0 || strcmp(rest, "/warm") == 0) {
        bool warm = rest[1] == 'w';
        if (m == HTTP_GET)
            serve_progress(adm, req, warm ? &adm->warm : &adm->verify);
        else if (m == HTTP_POST && warm)
            http_req_buffer_body(req, ADMIN_WARM_BODY_MAX, warm_body, adm);
        else if (m == HTTP_POST)
            serve_verify(adm, req);
        else
            method_not_allowed(req, "GET, POST");
    } else if (rest[0] == '/') {
        if (m == HTTP_DELETE)
            serve_rm(adm, req, rest + 1);
        else
            method_not_allowed(req, "DELETE");
    } else {
        http_resp_start(req, 404);
        http_resp_no_body(req, 0);
    }
}

/* ---- life cycle ---- */

struct admin *admin_new(struct event_base *base, const struct api *api, struct auth *auth,
                        struct storage *st)
{
    struct admin *adm = calloc(1, sizeof(*adm));
    if (!adm)
        return NULL;
    adm->api = api;
    adm->auth = auth;
    adm->st = st;
    atomic_init(&adm->stop, false);
    pthread_mutex_init(&adm->mu, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    adm->pool = offload_new(base, ADMIN_THREADS);
    if (!adm->pool) {
        admin_free(adm);
        return NULL;
    }
    return adm;
}

void admin_free(struct admin *adm)
{
    if (!adm)
        return;
    atomic_store(&adm->stop, true);
    offload_free(adm->pool); /* waits for the job in progress */
    pthread_mutex_destroy(&adm->mu);
    free(adm);
}
