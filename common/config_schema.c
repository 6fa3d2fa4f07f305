/*
 * config_schema: the tables of keys (struct field / struct schema) that drive decoding,
 * defaults, environment matching, printing and freeing: a new key is one line here.
 */
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include "config_int.h"

/* ------------------------------------------------------------------------------------------ */
/* Schema                                                                                      */

#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))
#define SCHEMA(name, fields, ...)                                                                  \
    static const struct schema name = {fields, NFIELDS(fields), __VA_ARGS__}

#define C(m) offsetof(struct config, m)
#define STR(k, o, ...)                                                                             \
    {                                                                                              \
        .key = k, .type = T_STR, .off = o, __VA_ARGS__                                             \
    }
#define BOOL(k, o, ...)                                                                            \
    {                                                                                              \
        .key = k, .type = T_BOOL, .off = o, __VA_ARGS__                                            \
    }
#define INT(k, o, lo, hi, ...)                                                                     \
    {                                                                                              \
        .key = k, .type = T_INT, .off = o, .min = lo, .max = hi, __VA_ARGS__                       \
    }
#define I64(k, o, lo, hi, ...)                                                                     \
    {                                                                                              \
        .key = k, .type = T_I64, .off = o, .min = lo, .max = hi, __VA_ARGS__                       \
    }
#define DUR(k, o, ...)                                                                             \
    {                                                                                              \
        .key = k, .type = T_DUR, .off = o, __VA_ARGS__                                             \
    }
#define AMOUNT(k, o, lo, hi, ...)                                                                  \
    {                                                                                              \
        .key = k, .type = T_AMOUNT, .off = o, .min = lo, .max = hi, __VA_ARGS__                    \
    }
#define ENUM(k, o, names, ...)                                                                     \
    {                                                                                              \
        .key = k, .type = T_ENUM, .off = o, .sub = names, __VA_ARGS__                              \
    }
#define LIST(k, o, n, ...)                                                                         \
    {                                                                                              \
        .key = k, .type = T_STRLIST, .off = o, .noff = n, __VA_ARGS__                              \
    }
#define HEADERS(k, o, n)                                                                           \
    {                                                                                              \
        .key = k, .type = T_HEADERS, .off = o, .noff = n                                           \
    }
#define KV(k, o, n)                                                                                \
    {                                                                                              \
        .key = k, .type = T_KV, .off = o, .noff = n                                                \
    }
#define SECTION(k, s, ...)                                                                         \
    {                                                                                              \
        .key = k, .type = T_STRUCT, .sub = &s, __VA_ARGS__                                         \
    }
#define SECTIONS(k, o, n, s, ...)                                                                  \
    {                                                                                              \
        .key = k, .type = T_LIST, .off = o, .noff = n, .sub = &s, __VA_ARGS__                      \
    }

#define MIB (1024LL * 1024)

static const struct enum_name log_levels[] = {{"error", LOG_ERROR, 0},
                                              {"warn", LOG_WARN, 0},
                                              {"info", LOG_INFO, 0},
                                              {"debug", LOG_DEBUG, 0},
                                              {NULL, 0, 0}};
static const struct enum_name log_formatters[] = {{"text", LOG_FORMAT_TEXT, 0},
                                                  {"json", LOG_FORMAT_JSON, 0},
                                                  {"logstash", LOG_FORMAT_JSON, 1},
                                                  {NULL, 0, 0}};
static const struct enum_name caches[] = {{"inmemory", CONFIG_CACHE_INMEMORY, 0},
                                          {"redis", CONFIG_CACHE_REDIS, 0},
                                          {"", CONFIG_CACHE_NONE, 0},
                                          {NULL, 0, 0}};
static const struct enum_name platforms[] = {{"all", CONFIG_PLATFORMS_ALL, 0},
                                             {"none", CONFIG_PLATFORMS_NONE, 0},
                                             {"list", CONFIG_PLATFORMS_LIST, 0},
                                             {NULL, 0, 0}};

/* Printing predicates: which optional sections are in effect. */
static bool on_filesystem(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_FILESYSTEM;
}
static bool on_inmemory(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_INMEMORY;
}
static bool on_oss(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_OSS;
}
static bool on_s3(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_S3;
}
static bool on_tag(const void *b)
{
    return ((const struct config *)b)->storage.tag_concurrencylimit != 0;
}
static bool on_silly(const void *b)
{
    return ((const struct config *)b)->auth.type == CONFIG_AUTH_SILLY;
}
static bool on_token(const void *b)
{
    return ((const struct config *)b)->auth.type == CONFIG_AUTH_TOKEN;
}
static bool on_htpasswd(const void *b)
{
    return ((const struct config *)b)->auth.type == CONFIG_AUTH_HTPASSWD;
}
static bool on_tls(const void *b)
{
    const struct config *c = b;
    return c->http.tls.certificate[0] || c->http.tls.letsencrypt.cachefile[0];
}
static bool on_letsencrypt(const void *b)
{
    return ((const struct config *)b)->http.tls.letsencrypt.cachefile[0] != '\0';
}
static bool on_debug(const void *b)
{
    return ((const struct config *)b)->http.debug.addr[0] != '\0';
}
static bool on_notifications(const void *b)
{
    const struct config *c = b;
    return c->notifications.nendpoints || c->notifications.events_includereferences;
}
static bool on_redis(const void *b)
{
    const struct config *c = b;
    return c->redis.addr[0] || c->redis.sentinel.mastername[0];
}
static bool on_sentinel(const void *b)
{
    return ((const struct config *)b)->redis.sentinel.mastername[0] != '\0';
}
static bool on_storagedriver(const void *b)
{
    return ((const struct config *)b)->health.storagedriver.enabled;
}
static bool on_proxy(const void *b)
{
    return ((const struct config *)b)->proxy.remoteurl[0] != '\0';
}
static bool on_schema1(const void *b)
{
    const struct config *c = b;
    return c->compatibility.schema1.enabled || c->compatibility.schema1.signingkeyfile[0];
}
static bool on_bugsnag(const void *b)
{
    return ((const struct config *)b)->reporting.bugsnag.apikey[0] != '\0';
}
static bool on_newrelic(const void *b)
{
    return ((const struct config *)b)->reporting.newrelic.licensekey[0] != '\0';
}

/* log */
#define H(m) offsetof(struct config_log_hook, m)
static const struct field smtp_fields[] = {
    STR("addr", H(smtp.addr)),
    STR("username", H(smtp.username)),
    STR("password", H(smtp.password), .flags = F_SECRET),
    BOOL("insecure", H(smtp.insecure)),
};
SCHEMA(smtp_schema, smtp_fields, 0, 0, NULL, NULL);
static const struct field hook_options_fields[] = {
    SECTION("smtp", smtp_schema),
    STR("from", H(from)),
    LIST("to", H(to), H(nto)),
};
SCHEMA(hook_options_schema, hook_options_fields, 0, 0, NULL, NULL);
static const struct field hook_fields[] = {
    BOOL("disabled", H(disabled)),
    STR("type", H(type)),
    LIST("levels", H(levels), H(nlevels)),
    SECTION("options", hook_options_schema, .env = "MAILOPTIONS"),
};
SCHEMA(hook_schema, hook_fields, sizeof(struct config_log_hook), 0, NULL, NULL);
#undef H

static const struct field accesslog_fields[] = {BOOL("disabled", C(log.accesslog_disabled))};
SCHEMA(accesslog_schema, accesslog_fields, 0, 0, NULL, NULL);
static const struct field log_fields[] = {
    SECTION("accesslog", accesslog_schema),
    ENUM("level", C(log.level), log_levels, .def = "info"),
    ENUM("formatter", C(log.formatter), log_formatters, .flags = F_VARIANT,
         .noff = C(log.formatter_logstash), .def = "text"),
    KV("fields", C(log.fields), C(log.nfields)),
    SECTIONS("hooks", C(log.hooks), C(log.nhooks), hook_schema),
    BOOL("reportcaller", C(log.reportcaller)),
};
SCHEMA(log_schema, log_fields, 0, 0, NULL, NULL);

/* storage */
static const struct field filesystem_fields[] = {
    STR("rootdirectory", C(storage.filesystem.rootdirectory), .def = "/var/lib/registry"),
    INT("maxthreads", C(storage.filesystem.maxthreads), 25, INT_MAX, .def = "100",
        .flags = F_CLAMP),
};
SCHEMA(filesystem_schema, filesystem_fields, 0, S_MAPLIKE, on_filesystem, NULL);
static const struct field inmemory_fields[1] = {{.key = NULL}};
static const struct schema inmemory_schema = {inmemory_fields,      0,           0,
                                              S_MAPLIKE | S_ALWAYS, on_inmemory, NULL};
static const struct field oss_fields[] = {
    STR("accesskeyid", C(storage.oss.accesskeyid)),
    STR("accesskeysecret", C(storage.oss.accesskeysecret), .flags = F_SECRET),
    STR("region", C(storage.oss.region)),
    STR("endpoint", C(storage.oss.endpoint)),
    BOOL("internal", C(storage.oss.internal)),
    STR("bucket", C(storage.oss.bucket)),
    BOOL("encrypt", C(storage.oss.encrypt)),
    STR("encryptionkeyid", C(storage.oss.encryptionkeyid)),
    BOOL("secure", C(storage.oss.secure), .def = "true"),
    I64("chunksize", C(storage.oss.chunksize), 5 * MIB, LLONG_MAX, .def = "10485760"),
    STR("rootdirectory", C(storage.oss.rootdirectory)),
};
SCHEMA(oss_schema, oss_fields, 0, S_MAPLIKE, on_oss, NULL);
static const struct field s3_fields[] = {
    STR("accesskey", C(storage.s3.accesskey)),
    STR("secretkey", C(storage.s3.secretkey), .flags = F_SECRET),
    STR("sessiontoken", C(storage.s3.sessiontoken), .flags = F_SECRET),
    STR("region", C(storage.s3.region)),
    STR("regionendpoint", C(storage.s3.regionendpoint)),
    BOOL("forcepathstyle", C(storage.s3.forcepathstyle)),
    BOOL("accelerate", C(storage.s3.accelerate)),
    STR("bucket", C(storage.s3.bucket)),
    BOOL("encrypt", C(storage.s3.encrypt)),
    STR("keyid", C(storage.s3.keyid)),
    BOOL("secure", C(storage.s3.secure), .def = "true"),
    BOOL("skipverify", C(storage.s3.skipverify)),
    BOOL("v4auth", C(storage.s3.v4auth), .def = "true"),
    I64("chunksize", C(storage.s3.chunksize), 5 * MIB, 5 * 1024 * MIB, .def = "10485760"),
    I64("multipartcopychunksize", C(storage.s3.multipartcopychunksize), 5 * MIB, 5 * 1024 * MIB,
        .def = "33554432"),
    I64("multipartcopymaxconcurrency", C(storage.s3.multipartcopymaxconcurrency), 1, LLONG_MAX,
        .def = "100"),
    I64("multipartcopythresholdsize", C(storage.s3.multipartcopythresholdsize), 0, 5 * 1024 * MIB,
        .def = "33554432"),
    STR("rootdirectory", C(storage.s3.rootdirectory)),
    STR("storageclass", C(storage.s3.storageclass), .def = "STANDARD"),
    STR("objectacl", C(storage.s3.objectacl), .def = "private"),
    STR("useragent", C(storage.s3.useragent)),
    STR("loglevel", C(storage.s3.loglevel)),
    STR("redirectendpoint", C(storage.s3.redirectendpoint)),
    BOOL("usedualstack", C(storage.s3.usedualstack)),
    BOOL("usefipsendpoint", C(storage.s3.usefipsendpoint)),
};
SCHEMA(s3_schema, s3_fields, 0, S_MAPLIKE, on_s3, NULL);
static const struct field delete_fields[] = {BOOL("enabled", C(storage.delete_enabled))};
SCHEMA(delete_schema, delete_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field redirect_fields[] = {BOOL("disable", C(storage.redirect_disable))};
SCHEMA(redirect_schema, redirect_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field cache_fields[] = {
    /* the old name first, so that blobdescriptor wins when both are given */
    ENUM("layerinfo", C(storage.cache.blobdescriptor), caches, .flags = F_ALIAS),
    ENUM("blobdescriptor", C(storage.cache.blobdescriptor), caches),
    INT("blobdescriptorsize", C(storage.cache.blobdescriptorsize), 1, INT_MAX, .def = "10000"),
};
SCHEMA(cache_schema, cache_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field uploadpurging_fields[] = {
    BOOL("enabled", C(storage.maintenance.uploadpurging.enabled), .def = "true"),
    DUR("age", C(storage.maintenance.uploadpurging.age_ms), .def = "168h", .hint = "168h"),
    DUR("interval", C(storage.maintenance.uploadpurging.interval_ms), .def = "24h", .hint = "24h",
        .flags = F_ZERODEF),
    BOOL("dryrun", C(storage.maintenance.uploadpurging.dryrun)),
};
SCHEMA(uploadpurging_schema, uploadpurging_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field readonly_fields[] = {
    BOOL("enabled", C(storage.maintenance.readonly)),
};
SCHEMA(readonly_schema, readonly_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field maintenance_fields[] = {
    SECTION("uploadpurging", uploadpurging_schema),
    SECTION("readonly", readonly_schema),
};
SCHEMA(maintenance_schema, maintenance_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field tag_fields[] = {
    INT("concurrencylimit", C(storage.tag_concurrencylimit), 0, INT_MAX),
};
SCHEMA(tag_schema, tag_fields, 0, S_MAPLIKE, on_tag, NULL);
static const struct field storage_fields[] = {
    SECTION("filesystem", filesystem_schema),
    SECTION("inmemory", inmemory_schema),
    SECTION("oss", oss_schema),
    SECTION("s3", s3_schema),
    SECTION("delete", delete_schema),
    SECTION("redirect", redirect_schema),
    SECTION("cache", cache_schema),
    SECTION("maintenance", maintenance_schema),
    SECTION("tag", tag_schema),
};
const struct schema config_storage_schema = {.fields = storage_fields,
                                             .nfields = NFIELDS(storage_fields),
                                             .flags = S_OPEN | S_MAPLIKE,
                                             .print_extra = config_print_storage_params};

bool config_storage_param_section(const char *key)
{
    return !strcmp(key, "delete") || !strcmp(key, "redirect") || !strcmp(key, "cache") ||
           !strcmp(key, "maintenance") || !strcmp(key, "tag");
}

/* auth */
static const struct field silly_fields[] = {
    STR("realm", C(auth.silly.realm)),
    STR("service", C(auth.silly.service)),
};
SCHEMA(silly_schema, silly_fields, 0, S_MAPLIKE, on_silly, NULL);
static const struct field token_fields[] = {
    STR("realm", C(auth.token.realm)),
    STR("service", C(auth.token.service)),
    STR("issuer", C(auth.token.issuer)),
    STR("rootcertbundle", C(auth.token.rootcertbundle)),
    STR("jwks", C(auth.token.jwks)),
    BOOL("autoredirect", C(auth.token.autoredirect)),
    STR("autoredirectpath", C(auth.token.autoredirectpath), .def = "/auth/token"),
    LIST("signingalgorithms", C(auth.token.signingalgorithms), C(auth.token.nsigningalgorithms)),
};
SCHEMA(token_schema, token_fields, 0, S_MAPLIKE, on_token, NULL);
static const struct field htpasswd_fields[] = {
    STR("realm", C(auth.htpasswd.realm)),
    STR("path", C(auth.htpasswd.path)),
};
SCHEMA(htpasswd_schema, htpasswd_fields, 0, S_MAPLIKE, on_htpasswd, NULL);
static const struct schema none_schema = {inmemory_fields, 0, 0, S_MAPLIKE, NULL, NULL};
static const struct field auth_fields[] = {
    SECTION("silly", silly_schema),
    SECTION("token", token_schema),
    SECTION("htpasswd", htpasswd_schema),
    SECTION("none", none_schema),
};
SCHEMA(auth_schema, auth_fields, 0, S_OPEN | S_MAPLIKE, NULL, NULL);

/* middleware */
#define M(m) offsetof(struct config_middleware, m)
static const struct field middleware_fields[] = {
    STR("name", M(name)),
    BOOL("disabled", M(disabled)),
    KV("options", M(options), M(noptions)),
};
#undef M
SCHEMA(middleware_schema, middleware_fields, sizeof(struct config_middleware), 0, NULL, NULL);
static const struct field middlewares_fields[] = {
    SECTIONS("registry", C(middleware.registry), C(middleware.nregistry), middleware_schema),
    SECTIONS("repository", C(middleware.repository), C(middleware.nrepository), middleware_schema),
    SECTIONS("storage", C(middleware.storage), C(middleware.nstorage), middleware_schema),
};
SCHEMA(middlewares_schema, middlewares_fields, 0, S_MAPLIKE, NULL, NULL);

/* reporting */
static const struct field bugsnag_fields[] = {
    STR("apikey", C(reporting.bugsnag.apikey), .flags = F_SECRET),
    STR("releasestage", C(reporting.bugsnag.releasestage)),
    STR("endpoint", C(reporting.bugsnag.endpoint)),
};
SCHEMA(bugsnag_schema, bugsnag_fields, 0, 0, on_bugsnag, NULL);
static const struct field newrelic_fields[] = {
    STR("licensekey", C(reporting.newrelic.licensekey), .flags = F_SECRET),
    STR("name", C(reporting.newrelic.name)),
    BOOL("verbose", C(reporting.newrelic.verbose)),
};
SCHEMA(newrelic_schema, newrelic_fields, 0, 0, on_newrelic, NULL);
static const struct field reporting_fields[] = {
    SECTION("bugsnag", bugsnag_schema),
    SECTION("newrelic", newrelic_schema),
};
SCHEMA(reporting_schema, reporting_fields, 0, 0, NULL, NULL);

/* http */
static const struct field letsencrypt_fields[] = {
    STR("cachefile", C(http.tls.letsencrypt.cachefile)),
    STR("email", C(http.tls.letsencrypt.email)),
    LIST("hosts", C(http.tls.letsencrypt.hosts), C(http.tls.letsencrypt.nhosts)),
    STR("directoryurl", C(http.tls.letsencrypt.directoryurl)),
};
SCHEMA(letsencrypt_schema, letsencrypt_fields, 0, 0, on_letsencrypt, NULL);
static const struct field tls_fields[] = {
    STR("certificate", C(http.tls.certificate)),
    STR("key", C(http.tls.key)),
    LIST("clientcas", C(http.tls.clientcas), C(http.tls.nclientcas)),
    STR("clientauth", C(http.tls.clientauth)),
    STR("minimumtls", C(http.tls.minimumtls), .def = "tls1.2", .flags = F_ZERODEF),
    LIST("ciphersuites", C(http.tls.ciphersuites), C(http.tls.nciphersuites)),
    SECTION("letsencrypt", letsencrypt_schema),
};
SCHEMA(tls_schema, tls_fields, 0, 0, on_tls, NULL);
static const struct field prometheus_fields[] = {
    BOOL("enabled", C(http.debug.prometheus_enabled)),
    STR("path", C(http.debug.prometheus_path), .def = "/metrics", .flags = F_ZERODEF),
};
SCHEMA(prometheus_schema, prometheus_fields, 0, 0, NULL, NULL);
static const struct field debug_fields[] = {
    STR("addr", C(http.debug.addr), .hint = "a string like \"localhost:5001\""),
    SECTION("prometheus", prometheus_schema),
};
SCHEMA(debug_schema, debug_fields, 0, 0, on_debug, NULL);
static const struct field http2_fields[] = {BOOL("disabled", C(http.http2_disabled))};
SCHEMA(http2_schema, http2_fields, 0, 0, NULL, NULL);
static const struct field h2c_fields[] = {BOOL("enabled", C(http.h2c_enabled))};
SCHEMA(h2c_schema, h2c_fields, 0, 0, NULL, NULL);
static const struct field http_fields[] = {
    STR("addr", C(http.addr), .def = ":5000", .flags = F_ZERODEF,
        .hint = "a string like \":5000\" or \"host:port\""),
    STR("net", C(http.net), .def = "tcp", .flags = F_ZERODEF),
    STR("host", C(http.host), .hint = "a URL like \"https://registry.example.com\""),
    STR("prefix", C(http.prefix)),
    STR("secret", C(http.secret), .flags = F_SECRET),
    BOOL("relativeurls", C(http.relativeurls)),
    DUR("draintimeout", C(http.draintimeout_ms), .def = "8s", .hint = "60s"),
    SECTION("tls", tls_schema),
    HEADERS("headers", C(http.headers), C(http.nheaders)),
    SECTION("debug", debug_schema),
    SECTION("http2", http2_schema),
    SECTION("h2c", h2c_schema),
};
SCHEMA(http_schema, http_fields, 0, 0, NULL, NULL);

/* notifications */
#define E(m) offsetof(struct config_endpoint, m)
static const struct field ignore_fields[] = {
    LIST("mediatypes", E(ignore.mediatypes), E(ignore.nmediatypes)),
    LIST("actions", E(ignore.actions), E(ignore.nactions)),
};
SCHEMA(ignore_schema, ignore_fields, 0, 0, NULL, NULL);
static const struct field endpoint_fields[] = {
    STR("name", E(name)),
    BOOL("disabled", E(disabled)),
    STR("url", E(url), .hint = "a URL like \"https://listener.example.com/event\""),
    HEADERS("headers", E(headers), E(nheaders)),
    DUR("timeout", E(timeout_ms), .def = "1s", .flags = F_ZERODEF, .hint = "1s"),
    INT("threshold", E(threshold), 0, INT_MAX, .def = "10", .flags = F_ZERODEF),
    DUR("backoff", E(backoff_ms), .def = "1s", .flags = F_ZERODEF, .hint = "1s"),
    LIST("ignoredmediatypes", E(ignoredmediatypes), E(nignoredmediatypes)),
    SECTION("ignore", ignore_schema),
};
#undef E
SCHEMA(endpoint_schema, endpoint_fields, sizeof(struct config_endpoint), 0, NULL, NULL);
static const struct field events_fields[] = {
    BOOL("includereferences", C(notifications.events_includereferences)),
};
SCHEMA(events_schema, events_fields, 0, 0, NULL, NULL);
static const struct field notifications_fields[] = {
    SECTION("events", events_schema, .env = "EVENTCONFIG"),
    SECTIONS("endpoints", C(notifications.endpoints), C(notifications.nendpoints), endpoint_schema),
};
SCHEMA(notifications_schema, notifications_fields, 0, 0, on_notifications, NULL);

/* redis */
static const struct field pool_fields[] = {
    INT("maxidle", C(redis.pool.maxidle), 0, INT_MAX),
    INT("maxactive", C(redis.pool.maxactive), 0, INT_MAX),
    DUR("idletimeout", C(redis.pool.idletimeout_ms), .hint = "300s"),
};
SCHEMA(pool_schema, pool_fields, 0, 0, NULL, NULL);
static const struct field redis_tls_fields[] = {
    BOOL("enabled", C(redis.tls.enabled)),
    STR("certificate", C(redis.tls.certificate)),
    STR("key", C(redis.tls.key)),
    LIST("rootcas", C(redis.tls.rootcas), C(redis.tls.nrootcas)),
};
SCHEMA(redis_tls_schema, redis_tls_fields, 0, 0, NULL, NULL);
static const struct field redis_sentinel_fields[] = {
    STR("mastername", C(redis.sentinel.mastername)),
    LIST("addrs", C(redis.sentinel.addrs), C(redis.sentinel.naddrs)),
    STR("username", C(redis.sentinel.username)),
    STR("password", C(redis.sentinel.password), .flags = F_SECRET),
};
SCHEMA(redis_sentinel_schema, redis_sentinel_fields, 0, 0, on_sentinel, NULL);
static const struct field redis_fields[] = {
    STR("addr", C(redis.addr), .hint = "a string like \"localhost:6379\""),
    LIST("addrs", C(redis.addrs), C(redis.naddrs)),
    STR("username", C(redis.username)),
    STR("password", C(redis.password), .flags = F_SECRET),
    INT("db", C(redis.db), 0, INT_MAX),
    DUR("dialtimeout", C(redis.dialtimeout_ms), .hint = "10ms"),
    DUR("readtimeout", C(redis.readtimeout_ms), .hint = "10ms"),
    DUR("writetimeout", C(redis.writetimeout_ms), .hint = "10ms"),
    /* the newer flat names of the pool settings; pool.* wins when both are given */
    INT("maxidleconns", C(redis.pool.maxidle), 0, INT_MAX, .flags = F_ALIAS),
    INT("poolsize", C(redis.pool.maxactive), 0, INT_MAX, .flags = F_ALIAS),
    DUR("connmaxidletime", C(redis.pool.idletimeout_ms), .flags = F_ALIAS, .hint = "300s"),
    SECTION("pool", pool_schema),
    SECTION("tls", redis_tls_schema),
    /* distribution 3's flat names of the sentinel settings (redis.addrs are the sentinels) */
    STR("mastername", C(redis.sentinel.mastername), .flags = F_ALIAS),
    STR("sentinelusername", C(redis.sentinel.username), .flags = F_ALIAS),
    STR("sentinelpassword", C(redis.sentinel.password), .flags = F_ALIAS | F_SECRET),
    SECTION("sentinel", redis_sentinel_schema),
};
SCHEMA(redis_schema, redis_fields, 0, 0, on_redis, NULL);

/* health */
static const struct field storagedriver_fields[] = {
    BOOL("enabled", C(health.storagedriver.enabled)),
    DUR("interval", C(health.storagedriver.interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", C(health.storagedriver.threshold), 0, INT_MAX),
};
SCHEMA(storagedriver_schema, storagedriver_fields, 0, 0, on_storagedriver, NULL);
#define FC(m) offsetof(struct config_file_check, m)
static const struct field filecheck_fields[] = {
    STR("file", FC(file)),
    DUR("interval", FC(interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", FC(threshold), 0, INT_MAX),
};
#undef FC
SCHEMA(filecheck_schema, filecheck_fields, sizeof(struct config_file_check), 0, NULL, NULL);
#define HC(m) offsetof(struct config_http_check, m)
static const struct field httpcheck_fields[] = {
    STR("uri", HC(uri)),
    HEADERS("headers", HC(headers), HC(nheaders)),
    INT("statuscode", HC(statuscode), 0, 599, .def = "200", .flags = F_ZERODEF),
    DUR("timeout", HC(timeout_ms), .hint = "3s"),
    DUR("interval", HC(interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", HC(threshold), 0, INT_MAX),
};
#undef HC
SCHEMA(httpcheck_schema, httpcheck_fields, sizeof(struct config_http_check), 0, NULL, NULL);
#define TC(m) offsetof(struct config_tcp_check, m)
static const struct field tcpcheck_fields[] = {
    STR("addr", TC(addr)),
    DUR("timeout", TC(timeout_ms), .hint = "3s"),
    DUR("interval", TC(interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", TC(threshold), 0, INT_MAX),
};
#undef TC
SCHEMA(tcpcheck_schema, tcpcheck_fields, sizeof(struct config_tcp_check), 0, NULL, NULL);
static const struct field health_fields[] = {
    SECTION("storagedriver", storagedriver_schema),
    SECTIONS("file", C(health.file), C(health.nfile), filecheck_schema, .env = "FILECHECKERS"),
    SECTIONS("http", C(health.http), C(health.nhttp), httpcheck_schema, .env = "HTTPCHECKERS"),
    SECTIONS("tcp", C(health.tcp), C(health.ntcp), tcpcheck_schema, .env = "TCPCHECKERS"),
};
SCHEMA(health_schema, health_fields, 0, 0, NULL, NULL);

/* catalog, tags, proxy, compatibility, validation, policy */
static const struct field catalog_fields[] = {
    INT("maxentries", C(catalog.maxentries), INT_MIN, INT_MAX, .def = "1000", .flags = F_ZERODEF),
};
SCHEMA(catalog_schema, catalog_fields, 0, 0, NULL, NULL);
static const struct field tags_fields[] = {
    INT("maxtags", C(tags.maxtags), 0, INT_MAX, .def = "1000", .flags = F_ZERODEF),
};
SCHEMA(tags_schema, tags_fields, 0, 0, NULL, NULL);
#define PR(m) offsetof(struct config_proxy_remote, m)
static const struct field remote_fields[] = {
    STR("host", PR(host), .hint = "a registry host like \"ghcr.io\""),
    STR("remoteurl", PR(remoteurl), .hint = "a URL like \"https://ghcr.io\""),
    STR("username", PR(username)),
    STR("password", PR(password), .flags = F_SECRET),
};
SCHEMA(remote_schema, remote_fields, sizeof(struct config_proxy_remote), 0, NULL, NULL);
static const struct field proxy_fields[] = {
    STR("remoteurl", C(proxy.remoteurl), .hint = "a URL like \"https://registry-1.docker.io\""),
    STR("username", C(proxy.username)),
    STR("password", C(proxy.password), .flags = F_SECRET),
    DUR("ttl", C(proxy.ttl_ms), .def = "168h", .hint = "168h"),
    DUR("cachewritetimeout", C(proxy.cachewritetimeout_ms), .def = "5m", .flags = F_ZERODEF,
        .hint = "5m"),
    DUR("tagfreshness", C(proxy.tagfreshness_ms), .hint = "30s"),
    I64("maxsize", C(proxy.maxsize), 0, LLONG_MAX, .flags = F_BYTES, .hint = "10GB"),
    STR("spooldir", C(proxy.spooldir), .def = "/var/tmp/regmirror-spool", .flags = F_ZERODEF),
    BOOL("push", C(proxy.push)),
    LIST("pushusers", C(proxy.pushusers), C(proxy.npushusers)),
    BOOL("shadow", C(proxy.shadow)),
    INT("maxfetches", C(proxy.maxfetches), 1, 100000, .def = "64"),
    DUR("fetchqueuetimeout", C(proxy.fetchqueuetimeout_ms), .def = "60s", .flags = F_ZERODEF,
        .hint = "60s"),
    AMOUNT("ratelimitreserve", C(proxy.ratelimitreserve), 0, 1000000000, .def = "0", .hint = "10%"),
    SECTIONS("remotes", C(proxy.remotes), C(proxy.nremotes), remote_schema),
};
SCHEMA(proxy_schema, proxy_fields, 0, 0, on_proxy, NULL);
static bool on_cluster(const void *b)
{
    return ((const struct config *)b)->cluster.advertise[0] != '\0';
}
static const struct field cluster_fields[] = {
    STR("advertise", C(cluster.advertise), .hint = "a URL like \"http://10.0.0.5:5000\""),
};
SCHEMA(cluster_schema, cluster_fields, 0, 0, on_cluster, NULL);
static const struct field schema1_fields[] = {
    STR("signingkeyfile", C(compatibility.schema1.signingkeyfile), .env = "TRUSTKEY"),
    BOOL("enabled", C(compatibility.schema1.enabled)),
};
SCHEMA(schema1_schema, schema1_fields, 0, 0, on_schema1, NULL);
static const struct field compatibility_fields[] = {SECTION("schema1", schema1_schema)};
SCHEMA(compatibility_schema, compatibility_fields, 0, 0, NULL, NULL);
static const struct field urls_fields[] = {
    LIST("allow", C(validation.urls.allow), C(validation.urls.nallow)),
    LIST("deny", C(validation.urls.deny), C(validation.urls.ndeny)),
};
SCHEMA(urls_schema, urls_fields, 0, 0, NULL, NULL);
#define P(m) offsetof(struct config_platform, m)
static const struct field platform_fields[] = {
    STR("architecture", P(architecture)),
    STR("os", P(os)),
};
#undef P
SCHEMA(platform_schema, platform_fields, sizeof(struct config_platform), 0, NULL, NULL);
static const struct field indexes_fields[] = {
    ENUM("platforms", C(validation.indexes.platforms), platforms, .def = "all"),
    SECTIONS("platformlist", C(validation.indexes.platformlist),
             C(validation.indexes.nplatformlist), platform_schema),
};
SCHEMA(indexes_schema, indexes_fields, 0, 0, NULL, NULL);
static const struct field manifests_fields[] = {
    SECTION("urls", urls_schema, .env = "URLS"),
    SECTION("indexes", indexes_schema),
};
SCHEMA(manifests_schema, manifests_fields, 0, 0, NULL, NULL);
static const struct field validation_fields[] = {
    /* enabled = validation.enabled || !validation.disabled, as the reference computes it */
    BOOL("disabled", C(validation.enabled), .flags = F_NEGATE, .def = "false"),
    BOOL("enabled", C(validation.enabled), .flags = F_ONLYTRUE | F_ALIAS),
    SECTION("manifests", manifests_schema),
};
SCHEMA(validation_schema, validation_fields, 0, 0, NULL, NULL);
static const struct field repository_fields[] = {
    LIST("classes", C(policy_repository.classes), C(policy_repository.nclasses)),
};
SCHEMA(repository_schema, repository_fields, 0, 0, NULL, NULL);
static const struct field policy_fields[] = {SECTION("repository", repository_schema)};
SCHEMA(policy_schema, policy_fields, 0, 0, NULL, NULL);

static const struct field root_fields[] = {
    STR("version", C(version), .flags = F_VERBATIM),
    /* the deprecated spelling first, so that log.level wins when both are given */
    ENUM("loglevel", C(log.level), log_levels, .flags = F_ALIAS),
    SECTION("log", log_schema),
    SECTION("storage", config_storage_schema, .flags = F_SELECTOR),
    SECTION("auth", auth_schema, .flags = F_SELECTOR),
    SECTION("middleware", middlewares_schema),
    SECTION("reporting", reporting_schema),
    SECTION("http", http_schema),
    SECTION("notifications", notifications_schema),
    SECTION("redis", redis_schema),
    SECTION("health", health_schema),
    SECTION("catalog", catalog_schema),
    SECTION("tags", tags_schema),
    SECTION("proxy", proxy_schema),
    SECTION("cluster", cluster_schema),
    SECTION("compatibility", compatibility_schema),
    SECTION("validation", validation_schema),
    SECTION("policy", policy_schema),
};
const struct schema config_root_schema = {root_fields, NFIELDS(root_fields), 0, 0, NULL, NULL};

const struct field *config_find_field(const struct schema *s, const char *key)
{
    for (size_t i = 0; i < s->nfields; i++) {
        if (!strcmp(s->fields[i].key, key))
            return &s->fields[i];
    }
    return NULL;
}
