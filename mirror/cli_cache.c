/* `regmirror cache`: the cache admin from the command line, through the daemon or offline. */
#include "cli_cache.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "admin.h"
#include "buf.h"
#include "gc.h"
#include "inventory.h"
#include "layout.h"
#include "progress.h"
#include "reference.h"

/* An admin answer read into memory (a listing page of ADMIN_PAGE_MAX repositories fits). */
#define CLI_ANSWER_MAX (64u * 1024 * 1024)
#define CLI_PAGE 100
#define CLI_REFS_MAX 256
#define CLI_PLATFORMS_MAX 16
/* How often verify and warm ask the daemon how far they are. */
#define CLI_POLL_MS 250

struct cli {
    const char *verb, *config;
    const char *refs[CLI_REFS_MAX];
    size_t nrefs;
    const char *platforms[CLI_PLATFORMS_MAX];
    size_t nplatforms;
    const char *repo, *user;
    bool offline, include_local, json;
    struct config cfg;
    /* daemon */
    char base[512]; /* http://<debug addr>/admin/cache */
    CURL *curl;
    /* offline */
    struct storage *st;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: regmirror cache ls CONFIG [--repo NAME] [--json] [--offline]\n"
               "       regmirror cache rm CONFIG [--include-local] [--offline] REFERENCE...\n"
               "       regmirror cache verify CONFIG [--repo NAME] [--offline]\n"
               "       regmirror cache warm CONFIG [--platform OS/ARCH[/VARIANT]]... "
               "REFERENCE...\n"
               "\n"
               "REFERENCE is <name>:<tag> or <name>@<digest>. Without --offline the command\n"
               "talks to the running daemon on http.debug.addr of CONFIG (with auth.htpasswd:\n"
               "--user USER:PASSWORD or REGMIRROR_ADMIN_USER); with it, to the storage\n"
               "directly (stop the daemon first).\n");
}

static int parse_args(struct cli *c, int argc, char **argv)
{
    c->verb = argc > 0 ? argv[0] : NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--offline") == 0) {
            c->offline = true;
        } else if (strcmp(a, "--include-local") == 0) {
            c->include_local = true;
        } else if (strcmp(a, "--json") == 0) {
            c->json = true;
        } else if (strcmp(a, "--repo") == 0 && has_value) {
            c->repo = argv[++i];
        } else if (strcmp(a, "--user") == 0 && has_value) {
            c->user = argv[++i];
        } else if (strcmp(a, "--platform") == 0 && has_value && c->nplatforms < CLI_PLATFORMS_MAX) {
            c->platforms[c->nplatforms++] = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "regmirror cache: unknown option %s\n", a);
            return -1;
        } else if (!c->config) {
            c->config = a;
        } else if (c->nrefs < CLI_REFS_MAX) {
            c->refs[c->nrefs++] = a;
        } else {
            fprintf(stderr, "regmirror cache: %d references at most\n", CLI_REFS_MAX);
            return -1;
        }
    }
    bool refs = c->verb && (strcmp(c->verb, "rm") == 0 || strcmp(c->verb, "warm") == 0);
    bool known = c->verb && (refs || strcmp(c->verb, "ls") == 0 || strcmp(c->verb, "verify") == 0);
    if (!known || !c->config || (refs ? c->nrefs == 0 : c->nrefs != 0))
        return -1;
    if (c->repo && !reference_name_valid(c->repo, strlen(c->repo))) {
        fprintf(stderr, "regmirror cache: --repo %s is not a repository name\n", c->repo);
        return -1;
    }
    return 0;
}

/* ---- the daemon's debug listener ---- */

static int daemon_base(struct cli *c)
{
    const char *addr = c->cfg.http.debug.addr;
    if (!addr || !addr[0]) {
        fprintf(stderr,
                "regmirror cache: http.debug.addr is not set in %s: the daemon has no "
                "admin routes (use --offline with the daemon stopped)\n",
                c->config);
        return -1;
    }
    const char *colon = strrchr(addr, ':');
    size_t hl = colon ? (size_t)(colon - addr) : 0;
    char host[256];
    snprintf(host, sizeof(host), "%.*s", (int)(hl < sizeof(host) ? hl : sizeof(host) - 1), addr);
    if (!host[0] || strcmp(host, "0.0.0.0") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    else if (strcmp(host, "[::]") == 0)
        snprintf(host, sizeof(host), "[::1]");
    snprintf(c->base, sizeof(c->base), "http://%s%s" ADMIN_PATH, host, colon ? colon : "");
    c->curl = curl_easy_init();
    if (!c->curl)
        return -1;
    const char *user = c->user ? c->user : getenv("REGMIRROR_ADMIN_USER");
    if (user) {
        curl_easy_setopt(c->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c->curl, CURLOPT_USERPWD, user);
    }
    return 0;
}

static size_t sink(char *p, size_t size, size_t n, void *ctx)
{
    return buf_append(ctx, p, size * n) == BUF_OK ? size * n : 0;
}

/*
 * One request to the admin routes: method path (after /admin/cache, with its query), body
 * JSON (or NULL). The answer's status and JSON (new reference, or NULL); -1 when the daemon
 * cannot be reached (said on stderr).
 */
static long call(struct cli *c, CURL *curl, const char *method, const char *path, const char *body,
                 json_t **answer)
{
    char url[1024];
    struct buf out = BUF_INIT(CLI_ANSWER_MAX);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    long status = -1;
    *answer = NULL;
    snprintf(url, sizeof(url), "%s%s", c->base, path);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    if (!body)
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &out);
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        *answer = out.len ? json_loadb(out.p, out.len, 0, NULL) : NULL;
    } else {
        fprintf(stderr, "regmirror cache: %s: %s\n", url, curl_easy_strerror(rc));
    }
    curl_slist_free_all(hdrs);
    buf_free(&out);
    return status;
}

/* Says what an error answer says: "what: message: detail". */
static void print_error(const char *what, long status, const json_t *answer)
{
    const json_t *e = json_array_get(json_object_get(answer, "errors"), 0);
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *detail = json_string_value(json_object_get(e, "detail"));
    if (status == 401)
        fprintf(stderr,
                "regmirror cache: %s: the daemon wants a user of auth.htpasswd "
                "(--user USER:PASSWORD or REGMIRROR_ADMIN_USER)\n",
                what);
    else if (msg)
        fprintf(stderr, "regmirror cache: %s: %s%s%s\n", what, msg, detail ? ": " : "",
                detail ? detail : "");
    else
        fprintf(stderr, "regmirror cache: %s: HTTP %ld\n", what, status);
}

/* ---- ls ---- */

static void print_repos(const json_t *repos)
{
    char size[16], when[32];
    size_t i, k;
    const json_t *r, *img;
    printf("%-40s %-20s %-8s %9s %-20s %6s %s\n", "REPOSITORY", "IMAGE", "SOURCE", "SIZE",
           "LAST-PULLED", "PULLS", "UPSTREAM");
    json_array_foreach(repos, i, r)
    {
        const char *name = json_string_value(json_object_get(r, "name"));
        json_array_foreach(json_object_get(r, "images"), k, img)
        {
            const char *tag = json_string_value(json_object_get(img, "tag"));
            const char *digest = json_string_value(json_object_get(img, "digest"));
            const char *last = json_string_value(json_object_get(img, "last_pulled"));
            const char *up = json_string_value(json_object_get(img, "upstream"));
            const json_t *pulls = json_object_get(img, "pulls");
            char image[40], count[24] = "-";
            if (tag)
                snprintf(image, sizeof(image), "%s", tag);
            else
                snprintf(image, sizeof(image), "%.19s", digest ? digest : "?");
            if (json_is_integer(pulls))
                snprintf(count, sizeof(count), "%lld", (long long)json_integer_value(pulls));
            snprintf(when, sizeof(when), "%s", last ? last : "-");
            progress_bytes((uint64_t)json_integer_value(json_object_get(img, "size")), size);
            printf("%-40s %-20s %-8s %9s %-20s %6s %s\n", name ? name : "?", image,
                   json_string_value(json_object_get(img, "source")), size, when, count,
                   up ? up : "-");
        }
    }
}

static int ls_daemon(struct cli *c, json_t *all)
{
    char path[1024], *last = NULL;
    for (;;) {
        char *enc_repo = c->repo ? reference_url_encode(c->repo) : NULL;
        char *enc_last = last ? reference_url_encode(last) : NULL;
        snprintf(path, sizeof(path), "?n=%d%s%s%s%s", CLI_PAGE, enc_repo ? "&repo=" : "",
                 enc_repo ? enc_repo : "", enc_last ? "&last=" : "", enc_last ? enc_last : "");
        free(enc_repo);
        free(enc_last);
        free(last);
        last = NULL;
        json_t *answer;
        long status = call(c, c->curl, "GET", path, NULL, &answer);
        if (status != 200) {
            if (status > 0)
                print_error(c->repo ? c->repo : "ls", status, answer);
            json_decref(answer);
            return 1;
        }
        const json_t *repos = json_object_get(answer, "repositories");
        json_array_extend(all, (json_t *)repos);
        size_t n = json_array_size(repos);
        if (!c->repo && n == CLI_PAGE)
            last = strdup(json_string_value(json_object_get(json_array_get(repos, n - 1), "name")));
        json_decref(answer);
        if (!last)
            return 0;
    }
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every repository name of the store, sorted (as the catalog lists them). */
static int repo_names(struct storage *st, char ***names, size_t *n)
{
    char name[LAYOUT_PATH_MAX];
    size_t cap = 0;
    int rc;
    struct gc_walk *w = gc_walk_new(st);
    if (!w)
        return -1;
    while ((rc = gc_walk_next(w, name)) > 0) {
        if (buf_grow_items(names, &cap, *n + 1, sizeof(**names), BUF_UNCAPPED / sizeof(**names)) !=
                BUF_OK ||
            !((*names)[*n] = strdup(name))) {
            rc = -1;
            break;
        }
        (*n)++;
    }
    gc_walk_free(w);
    if (*n)
        qsort(*names, *n, sizeof(**names), cmp_names);
    return rc;
}

static int ls_offline(struct cli *c, json_t *all)
{
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    if (c->repo) {
        names = malloc(sizeof(*names));
        if (names && (names[0] = strdup(c->repo)))
            n = 1;
    } else if (repo_names(c->st, &names, &n) != 0) {
        fprintf(stderr, "regmirror cache: cannot list the repositories of the store\n");
        rc = 1;
    }
    for (size_t i = 0; i < n; i++) {
        struct inventory_repo r;
        enum regerr result = inventory_repo_read(c->st, names[i], &r);
        if (result == REG_OK) {
            json_array_append_new(all, admin_repo_json(&c->cfg, names[i], &r, false));
            inventory_repo_free(&r);
        } else if (result != REG_ERR_NAME_UNKNOWN || c->repo) {
            fprintf(stderr, "regmirror cache: %s: %s\n", names[i], regerr_message(result));
            rc = 1;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

static int cmd_ls(struct cli *c)
{
    json_t *all = json_array();
    int rc = c->offline ? ls_offline(c, all) : ls_daemon(c, all);
    if (rc == 0 && c->json) {
        json_t *body = json_pack("{s:O}", "repositories", all);
        json_dumpf(body, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(body);
    } else if (rc == 0) {
        print_repos(all);
    }
    json_decref(all);
    return rc;
}

/* ---- rm ---- */

static int rm_one(struct cli *c, const char *ref)
{
    char name[API_NAME_MAX], tag[API_REF_MAX], bytes[16];
    const char *why = "";
    enum regerr result = admin_ref_parse(ref, strlen(ref), name, tag, &why);
    if (result != REG_OK) {
        fprintf(stderr, "regmirror cache: %s: %s\n", ref, why);
        return 1;
    }
    struct inventory_removed removed = {0};
    if (c->offline) {
        result = inventory_purge(c->st, name, tag, c->include_local, &removed);
        if (result == REG_ERR_DENIED)
            fprintf(stderr, "regmirror cache: %s was pushed here; --include-local purges it too\n",
                    ref);
        else if (result == REG_ERR_MANIFEST_UNKNOWN)
            fprintf(stderr, "regmirror cache: %s: no such image in the cache\n", ref);
        else if (result != REG_OK)
            fprintf(stderr, "regmirror cache: %s: %s\n", ref, regerr_message(result));
        else
            printf("removed %s: %zu manifests, %zu blobs, %s\n", ref, removed.manifests,
                   removed.blobs, progress_bytes(removed.bytes, bytes));
        inventory_removed_free(&removed);
        return result == REG_OK ? 0 : 1;
    }
    char path[1024];
    json_t *answer;
    snprintf(path, sizeof(path), "/%s%s", ref, c->include_local ? "?include-local=true" : "");
    long status = call(c, c->curl, "DELETE", path, NULL, &answer);
    if (status == 200)
        printf(
            "removed %s: %lld manifests, %lld blobs, %s\n", ref,
            (long long)json_integer_value(json_object_get(answer, "manifests")),
            (long long)json_integer_value(json_object_get(answer, "blobs")),
            progress_bytes((uint64_t)json_integer_value(json_object_get(answer, "bytes")), bytes));
    else if (status > 0)
        print_error(ref, status, answer);
    json_decref(answer);
    return status == 200 ? 0 : 1;
}

static int cmd_rm(struct cli *c)
{
    int rc = 0;
    for (size_t i = 0; i < c->nrefs; i++)
        rc |= rm_one(c, c->refs[i]);
    return rc;
}

/* ---- verify and warm: a long request, its progress polled ---- */

/* Plain lines off a terminal: one every few seconds at most. */
#define CLI_PLAIN_EVERY_S 5

struct watch {
    struct progress bar;
    const char *label, *unit;
    time_t plain_at;
};

static void watch_show(struct watch *w, const json_t *p, bool force)
{
    size_t done = (size_t)json_integer_value(json_object_get(p, "done"));
    size_t total = (size_t)json_integer_value(json_object_get(p, "total"));
    uint64_t bytes = (uint64_t)json_integer_value(json_object_get(p, "bytes"));
    const char *note = json_string_value(json_object_get(p, "current"));
    if (w->bar.tty) {
        progress_draw(&w->bar, w->label, done, total, w->unit, bytes, note, force);
        return;
    }
    time_t now = time(NULL);
    if (!force && now - w->plain_at < CLI_PLAIN_EVERY_S)
        return;
    w->plain_at = now;
    char b[16];
    fprintf(stderr, "%s: %zu/%zu %s, %s%s%s\n", w->label, done, total, w->unit,
            progress_bytes(bytes, b), note && *note ? ", " : "", note ? note : "");
}

/*
 * POSTs path with body and, until the answer is in, polls GET path for the progress. The
 * answer's status and JSON.
 */
static long watched_post(struct cli *c, const char *path, const char *poll_path, const char *body,
                         struct watch *w, json_t **answer)
{
    char url[1024];
    struct buf out = BUF_INIT(CLI_ANSWER_MAX);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *post = curl_easy_duphandle(c->curl);
    CURLM *multi = curl_multi_init();
    long status = -1;
    int running = 1;
    *answer = NULL;
    if (!post || !multi)
        goto out;
    snprintf(url, sizeof(url), "%s%s", c->base, path);
    curl_easy_setopt(post, CURLOPT_URL, url);
    curl_easy_setopt(post, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(post, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(post, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(post, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(post, CURLOPT_WRITEDATA, &out);
    curl_multi_add_handle(multi, post);
    while (running) {
        curl_multi_perform(multi, &running);
        if (!running)
            break;
        curl_multi_poll(multi, NULL, 0, CLI_POLL_MS, NULL);
        json_t *p;
        if (call(c, c->curl, "GET", poll_path, NULL, &p) == 200)
            watch_show(w, p, false);
        json_decref(p);
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left))) {
        if (msg->msg == CURLMSG_DONE && msg->data.result != CURLE_OK)
            fprintf(stderr, "regmirror cache: %s: %s\n", url, curl_easy_strerror(msg->data.result));
        else if (msg->msg == CURLMSG_DONE)
            curl_easy_getinfo(post, CURLINFO_RESPONSE_CODE, &status);
    }
    if (status > 0 && out.len)
        *answer = json_loadb(out.p, out.len, 0, NULL);
    curl_multi_remove_handle(multi, post);
out:
    if (multi)
        curl_multi_cleanup(multi);
    if (post)
        curl_easy_cleanup(post);
    curl_slist_free_all(hdrs);
    buf_free(&out);
    return status;
}

static void verify_bar(void *ctx, size_t done, size_t total, uint64_t bytes)
{
    struct watch *w = ctx;
    json_t *p = json_pack("{s:I, s:I, s:I, s:s}", "done", (json_int_t)done, "total",
                          (json_int_t)total, "bytes", (json_int_t)bytes, "current", "");
    watch_show(w, p, done == total);
    json_decref(p);
}

static void print_verified(size_t checked, const json_t *removed, uint64_t bytes)
{
    char b[16];
    size_t i;
    const json_t *d;
    json_array_foreach(removed, i, d)
    {
        printf("removed %s: its bytes no longer match\n", json_string_value(d));
    }
    printf("verify: %zu blobs checked, %zu removed (%s)\n", checked, json_array_size(removed),
           progress_bytes(bytes, b));
}

static int cmd_verify(struct cli *c)
{
    struct watch w = {.label = "verify", .unit = "blobs"};
    progress_init(&w.bar, stderr);
    if (c->offline) {
        size_t checked = 0;
        struct inventory_removed removed = {0};
        enum regerr result =
            inventory_verify(c->st, c->repo, verify_bar, &w, NULL, &checked, &removed);
        progress_end(&w.bar);
        json_t *list = json_array();
        char ds[DIGEST_STR_MAX];
        for (size_t i = 0; i < removed.n; i++)
            json_array_append_new(list, json_string(digest_str(&removed.digests[i], ds)));
        print_verified(checked, list, removed.bytes);
        json_decref(list);
        inventory_removed_free(&removed);
        if (result != REG_OK)
            fprintf(stderr, "regmirror cache: verify: %s\n", regerr_message(result));
        return result == REG_OK ? 0 : 1;
    }
    char path[512];
    char *enc = c->repo ? reference_url_encode(c->repo) : NULL;
    snprintf(path, sizeof(path), "/verify%s%s", enc ? "?repo=" : "", enc ? enc : "");
    free(enc);
    json_t *answer;
    long status = watched_post(c, path, "/verify", NULL, &w, &answer);
    progress_end(&w.bar);
    if (status == 200)
        print_verified((size_t)json_integer_value(json_object_get(answer, "checked")),
                       json_object_get(answer, "removed"),
                       (uint64_t)json_integer_value(json_object_get(answer, "removed_bytes")));
    else if (status > 0)
        print_error("verify", status, answer);
    json_decref(answer);
    return status == 200 ? 0 : 1;
}

static int cmd_warm(struct cli *c)
{
    if (c->offline) {
        fprintf(stderr, "regmirror cache: warm pulls through the running daemon: it has no "
                        "--offline\n");
        return 2;
    }
    json_t *list = json_array(), *plats = json_array();
    for (size_t i = 0; i < c->nplatforms; i++)
        json_array_append_new(plats, json_string(c->platforms[i]));
    for (size_t i = 0; i < c->nrefs; i++)
        json_array_append_new(list,
                              json_pack("{s:s, s:O}", "reference", c->refs[i], "platforms", plats));
    char *body = json_dumps(list, JSON_COMPACT);
    json_decref(list);
    json_decref(plats);
    if (!body)
        return 1;
    struct watch w = {.label = "warm", .unit = "blobs"};
    progress_init(&w.bar, stderr);
    json_t *answer;
    long status = watched_post(c, "/warm", "/warm", body, &w, &answer);
    free(body);
    if (status == 200)
        watch_show(&w, answer, true);
    progress_end(&w.bar);
    int rc = status == 200 ? 0 : 1;
    if (status == 200) {
        size_t i;
        const json_t *r;
        char b[16];
        json_array_foreach(json_object_get(answer, "references"), i, r)
        {
            const char *err = json_string_value(json_object_get(r, "error"));
            printf("%s %s:%s: %lld manifests, %lld blobs, %s%s%s\n", err ? "failed" : "warmed",
                   json_string_value(json_object_get(r, "name")),
                   json_string_value(json_object_get(r, "reference")),
                   (long long)json_integer_value(json_object_get(r, "manifests")),
                   (long long)json_integer_value(json_object_get(r, "blobs")),
                   progress_bytes((uint64_t)json_integer_value(json_object_get(r, "bytes")), b),
                   err ? ": " : "", err ? err : "");
            if (err)
                rc = 1;
        }
    } else if (status > 0) {
        print_error("warm", status, answer);
    }
    json_decref(answer);
    return rc;
}

int cli_cache_main(int argc, char **argv, const struct cli_cache_env *env)
{
    struct cli c = {0};
    int rc = 1;
    if (argc > 0 && (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (parse_args(&c, argc, argv) != 0) {
        usage(stderr);
        return 2;
    }
    if (env->load_config(c.config, &c.cfg) != 0)
        return 1;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (c.offline ? !(c.st = env->open_storage(&c.cfg)) : daemon_base(&c) != 0)
        goto out;
    if (strcmp(c.verb, "ls") == 0)
        rc = cmd_ls(&c);
    else if (strcmp(c.verb, "rm") == 0)
        rc = cmd_rm(&c);
    else if (strcmp(c.verb, "verify") == 0)
        rc = cmd_verify(&c);
    else
        rc = cmd_warm(&c);
out:
    if (c.curl)
        curl_easy_cleanup(c.curl);
    if (c.st)
        storage_free(c.st);
    config_free(&c.cfg);
    curl_global_cleanup();
    return rc;
}
