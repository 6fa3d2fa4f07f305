/*
 * config: the entry points (load a string or a file, free, the embedded default), the load
 * context's messages, and the checks across keys that no single field's table can express.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "config_int.h"

/* ------------------------------------------------------------------------------------------ */
/* Diagnostics                                                                                 */

/* *cap is the allocated size of *list. */
static void add_message(char ***list, size_t *n, size_t *cap, const char *text)
{
    char *s;

    if (*n > MAX_MESSAGES)
        return;
    s = strdup(*n == MAX_MESSAGES ? "further messages left out" : text);
    if (!s)
        return;
    if (buf_grow_items(list, cap, *n + 1, sizeof(**list), MAX_MESSAGES + 1) != BUF_OK) {
        free(s);
        return;
    }
    (*list)[(*n)++] = s;
}

void config_report(struct ctx *c, bool error, const struct node *n, const char *fmt, ...)
{
    char what[1024];
    char line[1400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (n && n->env)
        snprintf(line, sizeof(line), "%s (from %s)", what, n->env);
    else if (n && n->line)
        snprintf(line, sizeof(line), "%s (%s:%u)", what, c->name, n->line);
    else
        snprintf(line, sizeof(line), "%s", what);
    if (error) {
        c->failed = true;
        add_message(&c->diag->errors, &c->diag->nerrors, &c->errors_cap, line);
    } else {
        add_message(&c->diag->warnings, &c->diag->nwarnings, &c->warnings_cap, line);
    }
}

void config_oom(struct ctx *c)
{
    ERR(c, NULL, "out of memory");
}

const char *config_quote_msg(const char *s, char *buf, size_t len)
{
    size_t o = 0;

    buf[o++] = '"';
    for (size_t i = 0; s[i] && o + 8 < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i == 60) {
            o += (size_t)snprintf(buf + o, len - o, "...");
            break;
        }
        if (ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\')
            o += (size_t)snprintf(buf + o, len - o, "\\x%02x", ch);
        else
            buf[o++] = (char)ch;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

const char *config_describe(const struct node *n, char *buf, size_t len)
{
    switch (n->kind) {
    case NODE_MAP:
        return "a mapping";
    case NODE_SEQ:
        return "a list";
    case NODE_NULL:
        return "nothing";
    default:
        return config_quote_msg(n->text, buf, len);
    }
}

void config_join(char *out, const char *path, const char *key)
{
    if (path[0])
        snprintf(out, PATH_LEN, "%s.%s", path, key);
    else
        snprintf(out, PATH_LEN, "%s", key);
}

/* ------------------------------------------------------------------------------------------ */
/* Checks across keys                                                                          */

static bool has_port(const char *s, bool port_required)
{
    const char *colon;
    long long port;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return false;
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return !port_required;
        if (memchr(s, ':', (size_t)(colon - s)))
            return false; /* IPv6 without brackets */
    }
    for (const char *p = s; p < colon; p++) {
        if (isspace((unsigned char)*p) || *p == '/')
            return false;
    }
    return config_parse_ll(colon + 1, &port) && isdigit((unsigned char)colon[1]) && port >= 0 &&
           port <= 65535;
}

static bool is_http_url(const char *s)
{
    return (!strncasecmp(s, "http://", 7) && s[7]) || (!strncasecmp(s, "https://", 8) && s[8]);
}

static void check_one_of(struct ctx *c, struct node *root, const char *path, const char *value,
                         const char *const *allowed)
{
    char list[512], got[128];
    size_t o = 0;

    if (!value[0])
        return;
    for (const char *const *a = allowed; *a; a++) {
        if (!strcmp(*a, value))
            return;
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", a == allowed ? "" : ", ", *a);
        if (o >= sizeof(list))
            break;
    }
    ERR(c, config_tree_at(root, path), "%s: expected one of %s, got %s", path, list,
        config_quote_msg(value, got, sizeof(got)));
}

static const char *const cipher_suites[] = {
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    NULL,
};

static void finish_http(struct ctx *c, struct node *root, struct config *cfg)
{
    static const char *const nets[] = {"tcp", "unix", NULL};
    static const char *const tls_versions[] = {"tls1.0", "tls1.1", "tls1.2", "tls1.3", NULL};
    static const char *const client_auths[] = {"request-client-cert", "require-any-client-cert",
                                               "verify-client-cert-if-given",
                                               "require-and-verify-client-cert", NULL};
    struct node *addr = config_tree_at(root, "http.addr");
    char got[128];

    check_one_of(c, root, "http.net", cfg->http.net, nets);
    if (!strcmp(cfg->http.net, "unix")) {
        if (!addr || !cfg->http.addr[0])
            ERR(c, addr, "http.addr: expected a socket path when http.net is unix");
    } else if (!has_port(cfg->http.addr, true)) {
        ERR(c, addr, "http.addr: expected a string like \":5000\" or \"host:port\", got %s",
            config_quote_msg(cfg->http.addr, got, sizeof(got)));
    }
    if (cfg->http.prefix[0] && cfg->http.prefix[0] != '/')
        ERR(c, config_tree_at(root, "http.prefix"),
            "http.prefix: expected a path like \"/registry/\", got %s",
            config_quote_msg(cfg->http.prefix, got, sizeof(got)));
    if (cfg->http.host[0] && !is_http_url(cfg->http.host))
        WARN(c, config_tree_at(root, "http.host"),
             "http.host: %s is not a URL like \"https://registry.example.com\"; generated URLs "
             "will not work",
             config_quote_msg(cfg->http.host, got, sizeof(got)));
    if (cfg->http.debug.addr[0] && !has_port(cfg->http.debug.addr, true))
        ERR(c, config_tree_at(root, "http.debug.addr"),
            "http.debug.addr: expected a string like \"localhost:5001\", got %s",
            config_quote_msg(cfg->http.debug.addr, got, sizeof(got)));
    if (cfg->http.tls.certificate[0] && !cfg->http.tls.key[0])
        ERR(c, config_tree_at(root, "http.tls"),
            "http.tls.key: required when http.tls.certificate is set");
    if (cfg->http.tls.key[0] && !cfg->http.tls.certificate[0])
        ERR(c, config_tree_at(root, "http.tls"),
            "http.tls.certificate: required when http.tls.key is set");
    check_one_of(c, root, "http.tls.minimumtls", cfg->http.tls.minimumtls, tls_versions);
    check_one_of(c, root, "http.tls.clientauth", cfg->http.tls.clientauth, client_auths);
    for (size_t i = 0; i < cfg->http.tls.nciphersuites; i++) {
        const char *cs = cfg->http.tls.ciphersuites[i];
        const char *const *k;
        for (k = cipher_suites; *k && strcmp(*k, cs); k++)
            ;
        if (!*k)
            ERR(c, config_tree_at(root, "http.tls.ciphersuites"),
                "http.tls.ciphersuites[%zu]: unknown cipher suite %s", i,
                config_quote_msg(cs, got, sizeof(got)));
    }
}

static void finish_storage(struct ctx *c, struct node *root, struct config *cfg)
{
    static const struct {
        const char *name;
        enum config_storage_driver driver;
    } drivers[] = {{"filesystem", CONFIG_STORAGE_FILESYSTEM},
                   {"inmemory", CONFIG_STORAGE_INMEMORY},
                   {"oss", CONFIG_STORAGE_OSS},
                   {"s3", CONFIG_STORAGE_S3},
                   {"azure", CONFIG_STORAGE_OTHER},
                   {"gcs", CONFIG_STORAGE_OTHER},
                   {"swift", CONFIG_STORAGE_OTHER}};
    struct node *st = config_tree_at(root, "storage");
    const char *found[2] = {NULL, NULL};
    size_t nfound = 0, i;
    struct node *params;

    if (!st || st->kind == NODE_NULL) {
        ERR(c, st,
            "storage: no storage configuration provided; expected one driver section "
            "such as filesystem, inmemory, oss or s3");
        return;
    }
    if (st->kind != NODE_MAP)
        return; /* reported by the decoder */
    for (i = 0; i < st->n; i++) {
        if (config_storage_param_section(st->keys[i]))
            continue;
        if (nfound < 2)
            found[nfound] = st->keys[i];
        nfound++;
    }
    if (nfound == 0) {
        ERR(c, st,
            "storage: no storage driver configured; expected one driver section such as "
            "filesystem, inmemory, oss or s3");
        return;
    }
    if (nfound > 1) {
        ERR(c, st, "storage: exactly one storage driver is allowed, found %s and %s%s", found[0],
            found[1], nfound > 2 ? " and more" : "");
        return;
    }
    config_set_string(c, &cfg->storage.driver_name, found[0]);
    params = config_map_get(st, found[0]);
    for (i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++) {
        if (!strcmp(drivers[i].name, found[0]))
            break;
    }
    if (i == sizeof(drivers) / sizeof(drivers[0])) {
        WARN(c, params, "storage.%s: unknown storage driver", found[0]);
        cfg->storage.driver = CONFIG_STORAGE_OTHER;
    } else {
        cfg->storage.driver = drivers[i].driver;
    }
    if (cfg->storage.driver == CONFIG_STORAGE_OTHER) {
        char path[PATH_LEN], got[128];
        size_t cap = 0; /* storage.params is filled here only */
        config_join(path, "storage", found[0]);
        if (params->kind == NODE_MAP)
            config_flatten(c, params, "", path, &cfg->storage.params, &cfg->storage.nparams, &cap);
        else if (params->kind != NODE_NULL)
            ERR(c, params, "%s: expected a mapping of driver parameters, got %s", path,
                config_describe(params, got, sizeof(got)));
    }
}

static void finish_auth(struct ctx *c, struct node *root, struct config *cfg)
{
    static const struct {
        const char *name;
        enum config_auth type;
    } types[] = {{"silly", CONFIG_AUTH_SILLY},
                 {"token", CONFIG_AUTH_TOKEN},
                 {"htpasswd", CONFIG_AUTH_HTPASSWD},
                 {"none", CONFIG_AUTH_NONE}};
    struct node *a = config_tree_at(root, "auth");
    size_t i;

    cfg->auth.type = CONFIG_AUTH_NONE;
    if (!a || a->kind != NODE_MAP || a->n == 0)
        return;
    if (a->n > 1) {
        ERR(c, a, "auth: exactly one auth type is allowed, found %s and %s%s", a->keys[0],
            a->keys[1], a->n > 2 ? " and more" : "");
        return;
    }
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (!strcmp(types[i].name, a->keys[0]))
            break;
    }
    if (i == sizeof(types) / sizeof(types[0])) {
        ERR(c, a->items[0], "auth.%s: unknown auth type; expected silly, token, htpasswd or none",
            a->keys[0]);
        return;
    }
    cfg->auth.type = types[i].type;
    switch (cfg->auth.type) {
    case CONFIG_AUTH_SILLY:
        if (!cfg->auth.silly.realm[0])
            ERR(c, a->items[0], "auth.silly.realm: required");
        if (!cfg->auth.silly.service[0])
            ERR(c, a->items[0], "auth.silly.service: required");
        break;
    case CONFIG_AUTH_TOKEN:
        if (!cfg->auth.token.realm[0])
            ERR(c, a->items[0], "auth.token.realm: required");
        if (!cfg->auth.token.service[0])
            ERR(c, a->items[0], "auth.token.service: required");
        if (!cfg->auth.token.issuer[0])
            ERR(c, a->items[0], "auth.token.issuer: required");
        if (!cfg->auth.token.rootcertbundle[0] && !cfg->auth.token.jwks[0])
            ERR(c, a->items[0], "auth.token: rootcertbundle or jwks is required");
        break;
    case CONFIG_AUTH_HTPASSWD:
        if (!cfg->auth.htpasswd.realm[0])
            ERR(c, a->items[0], "auth.htpasswd.realm: required");
        if (!cfg->auth.htpasswd.path[0])
            ERR(c, a->items[0], "auth.htpasswd.path: required");
        break;
    default:
        break;
    }
}

static void finish_lists(struct ctx *c, struct node *root, struct config *cfg)
{
    struct node *eps = config_tree_at(root, "notifications.endpoints");
    struct node *checks;
    char got[128];

    for (size_t i = 0; i < cfg->notifications.nendpoints; i++) {
        const struct config_endpoint *e = &cfg->notifications.endpoints[i];
        const struct node *n = eps && eps->kind == NODE_SEQ && i < eps->n ? eps->items[i] : eps;
        if (!e->name[0])
            ERR(c, n, "notifications.endpoints[%zu].name: required", i);
        if (!is_http_url(e->url))
            ERR(c, n,
                "notifications.endpoints[%zu].url: expected a URL like "
                "\"https://listener.example.com/event\", got %s",
                i, config_quote_msg(e->url, got, sizeof(got)));
    }
    checks = config_tree_at(root, "health.http");
    for (size_t i = 0; i < cfg->health.nhttp; i++) {
        if (!is_http_url(cfg->health.http[i].uri))
            ERR(c, checks, "health.http[%zu].uri: expected a URL like \"http://host/path\", got %s",
                i, config_quote_msg(cfg->health.http[i].uri, got, sizeof(got)));
        if (cfg->health.http[i].statuscode < 100)
            ERR(c, checks, "health.http[%zu].statuscode: expected an HTTP status from 100 to 599",
                i);
    }
    checks = config_tree_at(root, "health.tcp");
    for (size_t i = 0; i < cfg->health.ntcp; i++) {
        if (!has_port(cfg->health.tcp[i].addr, true))
            ERR(c, checks, "health.tcp[%zu].addr: expected a string like \"host:port\", got %s", i,
                config_quote_msg(cfg->health.tcp[i].addr, got, sizeof(got)));
    }
    checks = config_tree_at(root, "health.file");
    for (size_t i = 0; i < cfg->health.nfile; i++) {
        if (!cfg->health.file[i].file[0])
            ERR(c, checks, "health.file[%zu].file: required", i);
    }
}

/* End of the bracket expression opening at p ('['), or NULL when it is not closed. */
static const char *bracket_end(const char *p)
{
    p++;
    if (*p == '^')
        p++;
    if (*p == ']')
        p++;
    for (; *p && *p != ']'; p++) {
        if (*p == '[' && (p[1] == ':' || p[1] == '=' || p[1] == '.')) {
            const char *close = strchr(p + 2, p[1]);
            while (close && close[1] != ']')
                close = strchr(close + 1, p[1]);
            if (!close)
                return NULL;
            p = close + 1;
        }
    }
    return *p ? p : NULL;
}

/* Parses "{m}", "{m,}" or "{m,n}" at p: the largest count it allows (m + 1 for "{m,}") and
 * its end, or -1 when it is no bound (regcomp then judges it). */
static long bound_times(const char *p, const char **end)
{
    char *q;
    if (!isdigit((unsigned char)p[1]))
        return -1;
    long m = strtol(p + 1, &q, 10), n = m;
    if (*q == ',') {
        n = isdigit((unsigned char)q[1]) ? strtol(q + 1, &q, 10) : m + 1;
        if (*q == ',')
            return -1;
    }
    if (*q != '}')
        return -1;
    *end = q;
    return m > n ? m : n;
}

#define REGEX_GROUPS_MAX 32
#define REGEX_REPEAT_MAX 1000 /* Go's limit on a repeat count */
#define REGEX_SIZE_MAX 20000  /* atoms once glibc has copied every repeated part */

/*
 * Why glibc's regcomp would build an outsized automaton from pat, or NULL. glibc copies a
 * repeated part once per count and accepts repeated operators ("a+++" doubles the tree per
 * '+'), so a one-line pattern could take gigabytes at start. Go's regexp, registry:2's,
 * refuses nested repetition and counts above 1000; the lazy "*?" it reads is the same
 * match set in POSIX, so one '?' after a repetition stays allowed.
 */
static const char *regex_hazard(const char *pat)
{
    size_t total[REGEX_GROUPS_MAX + 1] = {0}, last[REGEX_GROUPS_MAX + 1] = {0};
    int depth = 0;
    bool after_rep = false, lazy_ok = false;

    for (const char *p = pat; *p; p++) {
        size_t atom = 1;
        long times = -1;
        const char *end = p;
        switch (*p) {
        case '\\':
            if (p[1])
                p++;
            break;
        case '[':
            p = bracket_end(p);
            if (!p)
                return NULL;
            break;
        case '(':
            if (depth == REGEX_GROUPS_MAX)
                return "groups nested more than 32 deep";
            depth++;
            total[depth] = last[depth] = 0;
            after_rep = false;
            continue;
        case ')':
            if (depth > 0)
                atom = total[depth--];
            break;
        case '|':
            last[depth] = 0;
            after_rep = false;
            continue;
        case '*':
        case '?':
            times = 1;
            break;
        case '+':
            times = 2;
            break;
        case '{':
            times = bound_times(p, &end);
            if (times > REGEX_REPEAT_MAX)
                return "a repeat count above 1000 (Go refuses it)";
            break;
        default:
            break;
        }
        if (times >= 0) {
            if (after_rep) {
                if (*p == '?' && lazy_ok) {
                    lazy_ok = false;
                    continue;
                }
                return "a repetition of a repetition (Go refuses it; glibc copies the "
                       "pattern for each)";
            }
            total[depth] += last[depth] * (size_t)(times > 0 ? times : 1) - last[depth] + 1;
            last[depth] = 0;
            after_rep = lazy_ok = true;
            p = end;
        } else {
            total[depth] += atom;
            last[depth] = atom;
            after_rep = false;
        }
        if (total[depth] > REGEX_SIZE_MAX)
            return "repeats that expand to more than 20000 parts";
    }
    return NULL;
}

/* validation.manifests.urls patterns must compile as the registry compiles them. */
static void finish_validation(struct ctx *c, struct node *root, const struct config *cfg)
{
    static const char *const which[] = {"allow", "deny"};
    char *const *lists[] = {cfg->validation.urls.allow, cfg->validation.urls.deny};
    const size_t counts[] = {cfg->validation.urls.nallow, cfg->validation.urls.ndeny};
    char path[64], got[128], why[128];
    for (int w = 0; w < 2; w++) {
        for (size_t i = 0; i < counts[w]; i++) {
            regex_t re;
            const char *pat = lists[w][i];
            const char *hazard = regex_hazard(pat);
            /* Go syntax that POSIX reads as something else: \d is a plain "d" there */
            const char *go = strstr(pat, "\\d")   ? "\\d (use [0-9])"
                             : strstr(pat, "\\D") ? "\\D (use [^0-9])"
                             : strstr(pat, "\\A") ? "\\A (use ^)"
                             : strstr(pat, "\\z") ? "\\z (use $)"
                             : strstr(pat, "\\p") || strstr(pat, "\\P")
                                 ? "Unicode class \\p or \\P (use a bracket expression)"
                                 : NULL;
            int rc = hazard || go ? 0 : regcomp(&re, pat, REG_EXTENDED | REG_NOSUB);
            if (!hazard && !go && rc == 0) {
                regfree(&re);
                continue;
            }
            if (hazard)
                snprintf(why, sizeof(why), "%s", hazard);
            else if (go)
                snprintf(why, sizeof(why), "Go's %s has no POSIX meaning", go);
            else
                regerror(rc, &re, why, sizeof(why));
            snprintf(path, sizeof(path), "validation.manifests.urls.%s", which[w]);
            ERR(c, config_tree_at(root, path),
                "%s[%zu]: %s is not a POSIX extended regular expression: %s", path, i,
                config_quote_msg(lists[w][i], got, sizeof(got)), why);
        }
    }
}

/* One Redis server (redis.addr, or the first of redis.addrs), or the sentinels that know the
 * master: redis.sentinel.*, or distribution 3's redis.mastername with redis.addrs. */
static void finish_redis(struct ctx *c, struct node *root, struct config *cfg)
{
    struct node *name = config_tree_at(root, "redis.sentinel.mastername");
    const char *key = name ? "redis.sentinel.mastername" : "redis.mastername";
    char got[128];

    if (!name)
        name = config_tree_at(root, "redis.mastername");
    if (!cfg->redis.sentinel.mastername[0]) {
        if (cfg->redis.sentinel.naddrs)
            ERR(c, config_tree_at(root, "redis.sentinel.addrs"),
                "redis.sentinel.addrs: needs redis.sentinel.mastername (the name the sentinels "
                "monitor the master by)");
        if (!cfg->redis.addr[0] && cfg->redis.naddrs)
            config_set_string(c, &cfg->redis.addr, cfg->redis.addrs[0]);
        if (cfg->redis.addr[0] && !has_port(cfg->redis.addr, true))
            ERR(c, config_tree_at(root, "redis.addr"),
                "redis.addr: expected a string like \"localhost:6379\", got %s",
                config_quote_msg(cfg->redis.addr, got, sizeof(got)));
        return;
    }
    /* distribution 3's form: the addrs are the sentinels */
    const char *list = "redis.sentinel.addrs";
    if (!cfg->redis.sentinel.naddrs) {
        list = "redis.addrs";
        cfg->redis.sentinel.addrs = cfg->redis.addrs;
        cfg->redis.sentinel.naddrs = cfg->redis.naddrs;
        cfg->redis.addrs = NULL;
        cfg->redis.naddrs = 0;
    }
    if (!cfg->redis.sentinel.naddrs)
        ERR(c, name,
            "%s: needs the sentinels (redis.sentinel.addrs, or redis.addrs with "
            "redis.mastername)",
            key);
    else if (cfg->redis.addr[0])
        ERR(c, config_tree_at(root, "redis.addr"),
            "redis.addr: not with %s (the sentinels name the master)", key);
    for (size_t i = 0; i < cfg->redis.sentinel.naddrs; i++)
        if (!has_port(cfg->redis.sentinel.addrs[i], true))
            ERR(c, config_tree_at(root, list),
                "%s[%zu]: expected a sentinel like \"localhost:26379\", got %s", list, i,
                config_quote_msg(cfg->redis.sentinel.addrs[i], got, sizeof(got)));
}

static void finish(struct ctx *c, struct node *root, struct config *cfg)
{
    struct node *v = config_tree_at(root, "version");
    char got[128];

    if (!v || v->kind == NODE_NULL)
        ERR(c, v, "version: required; expected \"0.1\"");
    else if (v->kind != NODE_SCALAR || strcmp(v->text, "0.1"))
        ERR(c, v, "version: expected \"0.1\", got %s", config_describe(v, got, sizeof(got)));
    finish_storage(c, root, cfg);
    finish_auth(c, root, cfg);
    finish_http(c, root, cfg);
    finish_lists(c, root, cfg);
    finish_validation(c, root, cfg);
    finish_redis(c, root, cfg);
    if (cfg->storage.cache.blobdescriptor == CONFIG_CACHE_REDIS && !cfg->redis.addr[0] &&
        !cfg->redis.sentinel.mastername[0])
        ERR(c, config_tree_at(root, "storage.cache.blobdescriptor"),
            "storage.cache.blobdescriptor: redis needs redis.addr (or redis.sentinel)");
    if (cfg->proxy.remoteurl[0] && !is_http_url(cfg->proxy.remoteurl))
        ERR(c, config_tree_at(root, "proxy.remoteurl"),
            "proxy.remoteurl: expected a URL like \"https://registry-1.docker.io\", got %s",
            config_quote_msg(cfg->proxy.remoteurl, got, sizeof(got)));
    if (cfg->cluster.advertise[0] && !is_http_url(cfg->cluster.advertise))
        ERR(c, config_tree_at(root, "cluster.advertise"),
            "cluster.advertise: expected a URL like \"http://10.0.0.5:5000\", got %s",
            config_quote_msg(cfg->cluster.advertise, got, sizeof(got)));
    else if (cfg->cluster.advertise[0] &&
             ((!cfg->redis.addr[0] && !cfg->redis.sentinel.mastername[0]) || !cfg->http.secret[0]))
        ERR(c, config_tree_at(root, "cluster.advertise"),
            "cluster.advertise: needs redis.addr (the nodes meet there) and http.secret (they "
            "prove themselves to each other with it)");
    /* Without client auth no request has a user: a list of pushers would refuse everyone. */
    if (cfg->proxy.npushusers && cfg->auth.type != CONFIG_AUTH_HTPASSWD)
        ERR(c, config_tree_at(root, "proxy.pushusers"),
            "proxy.pushusers: needs client auth (auth.htpasswd) to know who pushes");
    else if (cfg->proxy.npushusers && !cfg->proxy.push)
        WARN(c, config_tree_at(root, "proxy.pushusers"),
             "proxy.pushusers: has no effect without proxy.push: true");
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                     */

int config_load_string(const char *yaml, size_t len, const char *name, char *const *envp,
                       struct config *out, struct config_diag *diag)
{
    struct ctx c;
    struct config cfg;
    struct node *root = NULL;
    char *error = NULL;
    int result = -1;

    memset(diag, 0, sizeof(*diag));
    memset(&c, 0, sizeof(c));
    memset(&cfg, 0, sizeof(cfg));
    memset(out, 0, sizeof(*out));
    c.diag = diag;
    c.name = name ? name : "config";
    if (!yaml)
        len = 0;
    if (len > CONFIG_MAX_FILE) {
        ERR(&c, NULL, "%s: larger than %d bytes", c.name, CONFIG_MAX_FILE);
        goto out;
    }
    root = config_parse_yaml(&c, yaml ? yaml : "", len, NULL, &error);
    if (!root) {
        ERR(&c, NULL, "%s", error);
        goto out;
    }
    config_normalize_selector(&c, root, "storage");
    config_normalize_selector(&c, root, "auth");
    if (envp)
        config_apply_env(&c, &root, envp);
    config_apply_defaults(&c, &config_root_schema, &cfg);
    config_decode_struct(&c, &config_root_schema, root, "", &cfg);
    if (root->kind == NODE_MAP || root->kind == NODE_NULL)
        finish(&c, root, &cfg);
    if (c.failed)
        goto out;
    *out = cfg;
    memset(&cfg, 0, sizeof(cfg));
    result = 0;
out:
    config_free(&cfg);
    config_node_free(root);
    free(error);
    for (size_t i = 0; i < c.nenvs; i++) {
        free(c.envs[i].name);
        free(c.envs[i].value);
    }
    free(c.envs);
    return result;
}

int config_load_file(const char *path, char *const *envp, struct config *out,
                     struct config_diag *diag)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0; /* diag's lists start empty */
    int result = -1;

    memset(diag, 0, sizeof(*diag));
    memset(out, 0, sizeof(*out));
    if (!f) {
        char msg[PATH_LEN + 128];
        snprintf(msg, sizeof(msg), "%s: %s", path, strerror(errno));
        add_message(&diag->errors, &diag->nerrors, &cap, msg);
        return -1;
    }
    buf = malloc(CONFIG_MAX_FILE + 1);
    if (buf)
        len = fread(buf, 1, CONFIG_MAX_FILE + 1, f);
    if (!buf || ferror(f) || len > CONFIG_MAX_FILE) {
        char msg[PATH_LEN + 128];
        snprintf(msg, sizeof(msg), "%s: %s", path,
                 !buf        ? "out of memory"
                 : ferror(f) ? "read error"
                             : "larger than 1 MiB");
        add_message(&diag->errors, &diag->nerrors, &cap, msg);
        goto out;
    }
    result = config_load_string(buf, len, path, envp, out, diag);
out:
    free(buf);
    fclose(f);
    return result;
}

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    config_free_struct(&config_root_schema, cfg);
    free(cfg->storage.driver_name);
    config_free_kv(cfg->storage.params, cfg->storage.nparams);
    memset(cfg, 0, sizeof(*cfg));
}

void config_diag_free(struct config_diag *diag)
{
    if (!diag)
        return;
    config_free_strlist(diag->errors, diag->nerrors);
    config_free_strlist(diag->warnings, diag->nwarnings);
    memset(diag, 0, sizeof(*diag));
}

/* ------------------------------------------------------------------------------------------ */
/* Embedded default, the same text as conf/config.yml                                          */

static const char default_yaml[] =
    "# regmirror default configuration: a Docker Hub mirror on :5000, in the file format of the\n"
    "# reference registry (registry:2's default config plus a proxy section).\n"
    "# Every key can be overridden from the environment, e.g. REGISTRY_HTTP_ADDR=:5001.\n"
    "# Pushes are refused (a read-only cache, as registry:2 in proxy mode); proxy.push: true\n"
    "# (REGISTRY_PROXY_PUSH=true) accepts them, see the README.\n"
    "version: 0.1\n"
    "log:\n"
    "  fields:\n"
    "    service: registry\n"
    "storage:\n"
    "  cache:\n"
    "    blobdescriptor: inmemory\n"
    "  filesystem:\n"
    "    rootdirectory: ./data\n"
    "  delete:\n"
    "    enabled: true\n"
    "http:\n"
    "  addr: :5000\n"
    "  headers:\n"
    "    X-Content-Type-Options: [nosniff]\n"
    "health:\n"
    "  storagedriver:\n"
    "    enabled: true\n"
    "    interval: 10s\n"
    "    threshold: 3\n"
    "proxy:\n"
    "  remoteurl: https://registry-1.docker.io\n";

const char *config_default_yaml(void)
{
    return default_yaml;
}
