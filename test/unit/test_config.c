#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

/* Tests run from the repository root; REGMIRROR_SRCDIR points elsewhere when they do not. */
static const char *srcdir(void)
{
    const char *d = getenv("REGMIRROR_SRCDIR");
    return d && *d ? d : ".";
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    FILE *mem;
    char chunk[4096];
    size_t n;

    if (!f)
        return NULL;
    mem = open_memstream(&buf, &len);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(mem);
    fclose(f);
    return buf;
}

static void dump(const struct config_diag *d)
{
    for (size_t i = 0; i < d->nerrors; i++)
        fprintf(stderr, "  error: %s\n", d->errors[i]);
    for (size_t i = 0; i < d->nwarnings; i++)
        fprintf(stderr, "  warning: %s\n", d->warnings[i]);
}

static int load(const char *yaml, char *const *env, struct config *cfg, struct config_diag *d)
{
    return config_load_string(yaml, strlen(yaml), "test.yml", env, cfg, d);
}

/* Loads and expects success with no errors; the caller frees both. */
static void load_ok(const char *yaml, char *const *env, struct config *cfg, struct config_diag *d)
{
    int r = load(yaml, env, cfg, d);
    if (r != 0 || d->nerrors)
        dump(d);
    assert_int_equal(r, 0);
    assert_int_equal(d->nerrors, 0);
}

static void load_default(char *const *env, struct config *cfg, struct config_diag *d)
{
    load_ok(config_default_yaml(), env, cfg, d);
}

/* Expects failure with an error containing needle. */
static void load_fails(const char *yaml, char *const *env, const char *needle)
{
    struct config cfg;
    struct config_diag d;
    bool found = false;

    assert_int_equal(load(yaml, env, &cfg, &d), -1);
    for (size_t i = 0; i < d.nerrors; i++)
        found = found || strstr(d.errors[i], needle);
    if (!found) {
        fprintf(stderr, "no error containing \"%s\":\n", needle);
        dump(&d);
    }
    assert_true(found);
    assert_null(cfg.version);
    config_diag_free(&d);
}

static bool has(char **list, size_t n, const char *needle)
{
    for (size_t i = 0; i < n; i++) {
        if (strstr(list[i], needle))
            return true;
    }
    return false;
}

static bool has_exact(char **list, size_t n, const char *text)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(list[i], text))
            return true;
    }
    return false;
}

static const char *kv(const struct config_kv *kv, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(kv[i].key, key))
            return kv[i].value;
    }
    return NULL;
}

static const struct config_header *header(const struct config_header *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcasecmp(h[i].name, name))
            return &h[i];
    }
    return NULL;
}

static char *print_to_string(const struct config *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    config_print(cfg, f);
    fclose(f);
    return buf;
}

#define MIN_YAML "version: 0.1\nstorage:\n  inmemory:\n"

/* ------------------------------------------------------------------------------------------ */

static void test_default_matches_conf_file(void **state)
{
    char path[1024];
    char *text;

    (void)state;
    snprintf(path, sizeof(path), "%s/conf/config.yml", srcdir());
    text = slurp(path);
    assert_non_null(text);
    assert_string_equal(text, config_default_yaml());
    free(text);
}

static void test_default_values(void **state)
{
    struct config cfg;
    struct config_diag d;
    const struct config_header *h;

    (void)state;
    load_default(NULL, &cfg, &d);
    assert_int_equal(d.nwarnings, 0);
    assert_string_equal(cfg.version, "0.1");
    assert_int_equal(cfg.log.level, LOG_INFO);
    assert_int_equal(cfg.log.formatter, LOG_FORMAT_TEXT);
    assert_false(cfg.log.formatter_logstash);
    assert_int_equal(cfg.log.nfields, 1);
    assert_string_equal(kv(cfg.log.fields, cfg.log.nfields, "service"), "registry");
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_FILESYSTEM);
    assert_string_equal(cfg.storage.driver_name, "filesystem");
    assert_string_equal(cfg.storage.filesystem.rootdirectory, "./data");
    assert_int_equal(cfg.storage.filesystem.maxthreads, 100);
    assert_int_equal(cfg.storage.cache.blobdescriptor, CONFIG_CACHE_INMEMORY);
    assert_int_equal(cfg.storage.cache.blobdescriptorsize, 10000);
    assert_true(cfg.storage.delete_enabled);
    assert_false(cfg.storage.redirect_disable);
    assert_true(cfg.storage.maintenance.uploadpurging.enabled);
    assert_int_equal(cfg.storage.maintenance.uploadpurging.age_ms, 168LL * 3600 * 1000);
    assert_int_equal(cfg.storage.maintenance.uploadpurging.interval_ms, 24LL * 3600 * 1000);
    assert_false(cfg.storage.maintenance.uploadpurging.dryrun);
    assert_false(cfg.storage.maintenance.readonly);
    assert_int_equal(cfg.auth.type, CONFIG_AUTH_NONE);
    assert_string_equal(cfg.http.addr, ":5000");
    assert_string_equal(cfg.http.net, "tcp");
    assert_string_equal(cfg.http.prefix, "");
    assert_string_equal(cfg.http.host, "");
    assert_string_equal(cfg.http.secret, "");
    assert_false(cfg.http.relativeurls);
    assert_int_equal(cfg.http.draintimeout_ms, 8000); /* fits docker stop's 10 s */
    assert_string_equal(cfg.http.tls.certificate, "");
    assert_string_equal(cfg.http.tls.minimumtls, "tls1.2");
    assert_int_equal(cfg.http.nheaders, 1);
    h = header(cfg.http.headers, cfg.http.nheaders, "X-Content-Type-Options");
    assert_non_null(h);
    assert_int_equal(h->nvalues, 1);
    assert_string_equal(h->values[0], "nosniff");
    assert_string_equal(cfg.http.debug.prometheus_path, "/metrics");
    assert_true(cfg.health.storagedriver.enabled);
    assert_int_equal(cfg.health.storagedriver.interval_ms, 10000);
    assert_int_equal(cfg.health.storagedriver.threshold, 3);
    assert_string_equal(cfg.proxy.remoteurl, "https://registry-1.docker.io");
    assert_false(cfg.proxy.push);
    assert_int_equal(cfg.proxy.ttl_ms, 168LL * 3600 * 1000);
    assert_string_equal(cfg.redis.addr, "");
    assert_true(cfg.validation.enabled);
    assert_int_equal(cfg.validation.indexes.platforms, CONFIG_PLATFORMS_ALL);
    assert_int_equal(cfg.catalog.maxentries, 1000);
    assert_int_equal(cfg.tags.maxtags, 1000);
    config_free(&cfg);
    config_diag_free(&d);
}

static int for_each_fixture(void (*fn)(const char *path, const char *name))
{
    char dir[1024];
    DIR *dp;
    struct dirent *e;
    int count = 0;

    snprintf(dir, sizeof(dir), "%s/test/fixtures/config", srcdir());
    dp = opendir(dir);
    assert_non_null(dp);
    while ((e = readdir(dp)) != NULL) {
        char path[2048];
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".yml"))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        fn(path, e->d_name);
        count++;
    }
    closedir(dp);
    return count;
}

static void check_fixture_loads(const char *path, const char *name)
{
    struct config cfg;
    struct config_diag d;
    int r = config_load_file(path, NULL, &cfg, &d);

    if (r != 0 || d.nerrors || (d.nwarnings && strcmp(name, "docs-full.yml"))) {
        fprintf(stderr, "%s:\n", name);
        dump(&d);
    }
    assert_int_equal(r, 0);
    /* the documentation's full example repeats middleware.storage: a warning, not an error */
    if (!strcmp(name, "docs-full.yml")) {
        assert_int_equal(d.nwarnings, 1);
        assert_true(has(d.warnings, d.nwarnings, "duplicate key \"storage\""));
    } else {
        assert_int_equal(d.nwarnings, 0);
    }
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_fixtures_load(void **state)
{
    (void)state;
    assert_true(for_each_fixture(check_fixture_loads) >= 10);
}

/* print(load(print(load(f)))) == print(load(f)): the printed form is valid and stable. */
static void check_fixture_roundtrip(const char *path, const char *name)
{
    struct config a, b;
    struct config_diag d;
    char *first, *second;

    assert_int_equal(config_load_file(path, NULL, &a, &d), 0);
    config_diag_free(&d);
    first = print_to_string(&a);
    if (config_load_string(first, strlen(first), name, NULL, &b, &d) != 0) {
        fprintf(stderr, "%s printed as:\n%s", name, first);
        dump(&d);
        fail();
    }
    second = print_to_string(&b);
    assert_string_equal(first, second);
    assert_int_equal(d.nwarnings, 0);
    free(first);
    free(second);
    config_free(&a);
    config_free(&b);
    config_diag_free(&d);
}

static void test_print_roundtrip(void **state)
{
    (void)state;
    for_each_fixture(check_fixture_roundtrip);
}

static void load_fixture(const char *name, struct config *cfg, struct config_diag *d)
{
    char path[1024];

    snprintf(path, sizeof(path), "%s/test/fixtures/config/%s", srcdir(), name);
    assert_int_equal(config_load_file(path, NULL, cfg, d), 0);
}

static void test_fixture_values(void **state)
{
    struct config cfg;
    struct config_diag d;
    const struct config_header *h;

    (void)state;
    load_fixture("user-hub-mirror.yml", &cfg, &d);
    assert_string_equal(cfg.proxy.remoteurl, "https://registry-1.docker.io");
    assert_string_equal(cfg.proxy.username, "<hub user>");
    assert_string_equal(cfg.proxy.password, "<hub password>");
    assert_false(cfg.storage.delete_enabled);
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("user-tls-delete.yml", &cfg, &d);
    assert_string_equal(cfg.http.addr, ":443");
    assert_string_equal(cfg.http.host, "https://registry.example.com");
    assert_string_equal(cfg.http.tls.key, "/certs/registry.example.com.key_nopwd");
    assert_string_equal(cfg.storage.filesystem.rootdirectory, "/var/lib/registry");
    assert_true(cfg.storage.delete_enabled);
    assert_string_equal(cfg.proxy.remoteurl, "");
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("redis-oss.yml", &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_OSS);
    assert_string_equal(cfg.storage.oss.accesskeyid, "LTAI5tEXAMPLEID");
    assert_string_equal(cfg.storage.oss.region, "oss-cn-shanghai");
    assert_true(cfg.storage.oss.internal);
    assert_true(cfg.storage.oss.secure);
    assert_int_equal(cfg.storage.oss.chunksize, 10485760);
    assert_int_equal(cfg.storage.cache.blobdescriptor, CONFIG_CACHE_REDIS);
    assert_true(cfg.storage.redirect_disable);
    assert_int_equal(cfg.storage.maintenance.uploadpurging.age_ms, 72LL * 3600 * 1000);
    assert_int_equal(cfg.log.formatter, LOG_FORMAT_JSON);
    assert_string_equal(cfg.redis.addr, "redis:6379");
    assert_int_equal(cfg.redis.dialtimeout_ms, 10);
    assert_int_equal(cfg.redis.pool.maxidle, 16);
    assert_int_equal(cfg.redis.pool.maxactive, 64);
    assert_int_equal(cfg.redis.pool.idletimeout_ms, 300000);
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("s3-cloudfront.yml", &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_S3);
    assert_string_equal(cfg.storage.s3.bucket, "docker.myregistry.com");
    assert_true(cfg.storage.s3.v4auth);
    assert_int_equal(cfg.storage.s3.chunksize, 5242880);
    assert_int_equal(cfg.storage.s3.multipartcopymaxconcurrency, 100);
    assert_string_equal(cfg.storage.s3.objectacl, "private");
    assert_int_equal(cfg.middleware.nstorage, 1);
    assert_string_equal(cfg.middleware.storage[0].name, "cloudfront");
    assert_string_equal(
        kv(cfg.middleware.storage[0].options, cfg.middleware.storage[0].noptions, "duration"),
        "60s");
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("notifications.yml", &cfg, &d);
    assert_true(cfg.notifications.events_includereferences);
    assert_int_equal(cfg.notifications.nendpoints, 2);
    assert_string_equal(cfg.notifications.endpoints[0].name, "alistener");
    assert_int_equal(cfg.notifications.endpoints[0].timeout_ms, 500);
    assert_int_equal(cfg.notifications.endpoints[0].threshold, 5);
    h = header(cfg.notifications.endpoints[0].headers, cfg.notifications.endpoints[0].nheaders,
               "Authorization");
    assert_non_null(h);
    /* the documentation's example is a flow list: the comma splits it in two, as in YAML */
    assert_int_equal(h->nvalues, 2);
    assert_string_equal(h->values[0], "Bearer <your token");
    assert_string_equal(h->values[1], "if needed>");
    assert_true(cfg.notifications.endpoints[1].disabled);
    assert_int_equal(cfg.notifications.endpoints[1].ignore.nactions, 1);
    assert_string_equal(cfg.notifications.endpoints[1].ignore.actions[0], "pull");
    assert_false(cfg.storage.maintenance.uploadpurging.enabled);
    assert_true(cfg.http.debug.prometheus_enabled);
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("htpasswd-tls.yml", &cfg, &d);
    assert_int_equal(cfg.auth.type, CONFIG_AUTH_HTPASSWD);
    assert_string_equal(cfg.auth.htpasswd.realm, "Registry Realm");
    assert_string_equal(cfg.auth.htpasswd.path, "/auth/htpasswd");
    assert_int_equal(cfg.http.tls.nciphersuites, 2);
    assert_int_equal(cfg.http.nheaders, 2);
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("dist-tokenserver.yml", &cfg, &d);
    assert_int_equal(cfg.log.level, LOG_DEBUG); /* from the deprecated top-level loglevel */
    assert_int_equal(cfg.auth.type, CONFIG_AUTH_TOKEN);
    assert_string_equal(cfg.auth.token.rootcertbundle, "/etc/docker/registry/tokenbundle.pem");
    assert_true(cfg.compatibility.schema1.enabled);
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("docs-full.yml", &cfg, &d);
    assert_int_equal(cfg.log.nhooks, 1);
    assert_string_equal(cfg.log.hooks[0].smtp.addr, "mail.example.com:25");
    assert_int_equal(cfg.log.hooks[0].nto, 1);
    assert_true(cfg.log.accesslog_disabled);
    assert_int_equal(cfg.middleware.nstorage, 1);
    assert_string_equal(cfg.middleware.storage[0].name, "redirect"); /* the later key wins */
    assert_int_equal(cfg.health.nfile, 1);
    assert_int_equal(cfg.health.nhttp, 1);
    assert_int_equal(cfg.health.http[0].statuscode, 200);
    assert_int_equal(cfg.health.tcp[0].timeout_ms, 3000);
    assert_string_equal(cfg.reporting.bugsnag.apikey, "bugsnagapikey");
    assert_true(cfg.reporting.newrelic.verbose);
    assert_int_equal(cfg.http.draintimeout_ms, 60000);
    assert_int_equal(cfg.http.tls.letsencrypt.nhosts, 1);
    assert_int_equal(cfg.validation.urls.nallow, 1);
    assert_string_equal(cfg.compatibility.schema1.signingkeyfile, "/etc/registry/key.json");
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("distribution3-keys.yml", &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_INMEMORY);
    assert_int_equal(cfg.storage.tag_concurrencylimit, 8);
    assert_int_equal(cfg.log.formatter, LOG_FORMAT_JSON);
    assert_true(cfg.log.formatter_logstash);
    assert_string_equal(cfg.redis.addr, "localhost:6379");
    assert_int_equal(cfg.redis.pool.maxidle, 16);
    assert_int_equal(cfg.redis.pool.maxactive, 64);
    assert_int_equal(cfg.redis.pool.idletimeout_ms, 300000);
    assert_int_equal(cfg.redis.tls.nrootcas, 1);
    assert_int_equal(cfg.validation.indexes.platforms, CONFIG_PLATFORMS_LIST);
    assert_int_equal(cfg.validation.indexes.nplatformlist, 1);
    assert_string_equal(cfg.validation.indexes.platformlist[0].os, "linux");
    assert_int_equal(cfg.auth.token.nsigningalgorithms, 2);
    assert_string_equal(cfg.http.tls.clientauth, "require-and-verify-client-cert");
    config_free(&cfg);
    config_diag_free(&d);

    load_fixture("docs-gcs.yml", &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_OTHER);
    assert_string_equal(cfg.storage.driver_name, "gcs");
    assert_string_equal(kv(cfg.storage.params, cfg.storage.nparams, "bucket"), "bucketname");
    assert_string_equal(kv(cfg.storage.params, cfg.storage.nparams, "credentials.client_id"),
                        "client_id_string");
    config_free(&cfg);
    config_diag_free(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Environment blocks of USER-CONFIGS.md on top of the default                                 */

static void test_env_filesystem_addr(void **state)
{
    char *env[] = {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/somewhere",
                   "REGISTRY_HTTP_ADDR=0.0.0.0:5001", "PATH=/usr/bin", NULL};
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_default(env, &cfg, &d);
    assert_int_equal(d.nwarnings, 0);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_FILESYSTEM);
    assert_string_equal(cfg.storage.filesystem.rootdirectory, "/somewhere");
    assert_string_equal(cfg.http.addr, "0.0.0.0:5001");
    assert_true(cfg.storage.delete_enabled);
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_env_oss(void **state)
{
    char *env[] = {"REGISTRY_STORAGE_OSS_ACCESSKEYID=<id>",
                   "REGISTRY_STORAGE_OSS_ACCESSKEYSECRET=<secret>",
                   "REGISTRY_STORAGE_OSS_REGION=oss-cn-shanghai",
                   "REGISTRY_STORAGE_OSS_BUCKET=<bucket>",
                   "REGISTRY_STORAGE=oss",
                   NULL};
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_default(env, &cfg, &d);
    assert_int_equal(d.nwarnings, 0);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_OSS);
    assert_string_equal(cfg.storage.driver_name, "oss");
    assert_string_equal(cfg.storage.oss.accesskeyid, "<id>");
    assert_string_equal(cfg.storage.oss.accesskeysecret, "<secret>");
    assert_string_equal(cfg.storage.oss.region, "oss-cn-shanghai");
    assert_string_equal(cfg.storage.oss.bucket, "<bucket>");
    assert_true(cfg.storage.oss.secure);
    /* the parameter sections of the file stay; only the driver changed */
    assert_int_equal(cfg.storage.cache.blobdescriptor, CONFIG_CACHE_INMEMORY);
    assert_true(cfg.storage.delete_enabled);
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_env_redis(void **state)
{
    char *env[] = {"REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=redis",
                   "REGISTRY_REDIS_ADDR=redis:6379",
                   "REGISTRY_REDIS_PASSWORD=<password>",
                   "REGISTRY_REDIS_DB=0",
                   "REGISTRY_REDIS_POOL_MAXIDLE=16",
                   "REGISTRY_REDIS_POOL_MAXACTIVE=64",
                   "REGISTRY_REDIS_POOL_IDLETIMEOUT=300s",
                   NULL};
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_default(env, &cfg, &d);
    assert_int_equal(d.nwarnings, 0);
    assert_int_equal(cfg.storage.cache.blobdescriptor, CONFIG_CACHE_REDIS);
    assert_string_equal(cfg.redis.addr, "redis:6379");
    assert_string_equal(cfg.redis.password, "<password>");
    assert_int_equal(cfg.redis.db, 0);
    assert_int_equal(cfg.redis.pool.maxidle, 16);
    assert_int_equal(cfg.redis.pool.maxactive, 64);
    assert_int_equal(cfg.redis.pool.idletimeout_ms, 300000);
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_env_htpasswd_tls(void **state)
{
    char *env[] = {"REGISTRY_AUTH=htpasswd",
                   "REGISTRY_AUTH_HTPASSWD_REALM=Registry Realm",
                   "REGISTRY_AUTH_HTPASSWD_PATH=/conf/htpasswd",
                   "REGISTRY_HTTP_TLS_CERTIFICATE=/conf/domain.pem",
                   "REGISTRY_HTTP_TLS_KEY=/conf/domain.key",
                   NULL};
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_default(env, &cfg, &d);
    assert_int_equal(d.nwarnings, 0);
    assert_int_equal(cfg.auth.type, CONFIG_AUTH_HTPASSWD);
    assert_string_equal(cfg.auth.htpasswd.realm, "Registry Realm");
    assert_string_equal(cfg.auth.htpasswd.path, "/conf/htpasswd");
    assert_string_equal(cfg.http.tls.certificate, "/conf/domain.pem");
    assert_string_equal(cfg.http.tls.key, "/conf/domain.key");
    config_free(&cfg);
    config_diag_free(&d);
}

/* The OSS, Redis and htpasswd blocks are used together in the write-ups. */
static void test_env_blocks_combined(void **state)
{
    char *env[] = {"REGISTRY_STORAGE=oss",
                   "REGISTRY_STORAGE_OSS_ACCESSKEYID=id",
                   "REGISTRY_STORAGE_OSS_ACCESSKEYSECRET=secret",
                   "REGISTRY_STORAGE_OSS_REGION=oss-cn-shanghai",
                   "REGISTRY_STORAGE_OSS_BUCKET=bucket",
                   "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=redis",
                   "REGISTRY_REDIS_ADDR=redis:6379",
                   "REGISTRY_REDIS_POOL_IDLETIMEOUT=300s",
                   "REGISTRY_AUTH=htpasswd",
                   "REGISTRY_AUTH_HTPASSWD_REALM=Registry Realm",
                   "REGISTRY_AUTH_HTPASSWD_PATH=/conf/htpasswd",
                   "REGISTRY_HTTP_ADDR=0.0.0.0:5001",
                   NULL};
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_default(env, &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_OSS);
    assert_int_equal(cfg.storage.cache.blobdescriptor, CONFIG_CACHE_REDIS);
    assert_int_equal(cfg.auth.type, CONFIG_AUTH_HTPASSWD);
    assert_string_equal(cfg.http.addr, "0.0.0.0:5001");
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_env_storage_selection(void **state)
{
    char *inmem[] = {"REGISTRY_STORAGE=inmemory", NULL};
    char *second[] = {"REGISTRY_STORAGE_S3_REGION=us-east-1", NULL};
    char *wrong_map[] = {"REGISTRY_STORAGE_S3=somestring", NULL};
    char *whole[] = {"REGISTRY_STORAGE={s3: {region: us-west-1, bucket: b}}", NULL};
    char *unknown[] = {"REGISTRY_STORAGE=azure", "REGISTRY_STORAGE_AZURE_ACCOUNTNAME=acct", NULL};
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_default(inmem, &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_INMEMORY);
    assert_true(cfg.storage.delete_enabled);
    config_free(&cfg);
    config_diag_free(&d);

    /* a second driver's parameters without REGISTRY_STORAGE: two drivers */
    load_fails(config_default_yaml(), second, "exactly one storage driver");
    load_fails(config_default_yaml(), wrong_map, "storage.s3: expected a mapping");

    /* a mapping replaces the whole section, parameter sections included */
    load_default(whole, &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_S3);
    assert_string_equal(cfg.storage.s3.region, "us-west-1");
    assert_false(cfg.storage.delete_enabled);
    config_free(&cfg);
    config_diag_free(&d);

    load_default(unknown, &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_OTHER);
    assert_string_equal(cfg.storage.driver_name, "azure");
    assert_string_equal(kv(cfg.storage.params, cfg.storage.nparams, "accountname"), "acct");
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_env_edge_cases(void **state)
{
    char *levels[] = {"REGISTRY_LOGLEVEL=debug", "REGISTRY_LOG_LEVEL=error", NULL};
    char *deprecated[] = {"REGISTRY_LOGLEVEL=debug", NULL};
    char *bad_level[] = {"REGISTRY_LOGLEVEL=derp", NULL};
    char *hooks_ok[] = {"REGISTRY_LOG_HOOKS=- type: asdf", NULL};
    char *hooks_bad[] = {"REGISTRY_LOG_HOOKS=somestring", NULL};
    char *ignored[] = {"REGISTRY_DUCKS=quack",
                       "registry_HTTP_ADDR=:1",
                       "REPORTING_NEWRELIC_NAME=x",
                       "REGISTRY_VERSION=0.2",
                       "REGISTRY_HTTP_FOO=1",
                       "REGISTRY_HTTP_ADDR_PORT=1",
                       NULL};
    char *headers[] = {"REGISTRY_HTTP_HEADERS_X-CONTENT-TYPE-OPTIONS=[sniff]",
                       "REGISTRY_HTTP_HEADERS_X-FRAME-OPTIONS=[DENY]", NULL};
    char *lists[] = {"REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME=hook",
                     "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL=http://listener/event",
                     "REGISTRY_NOTIFICATIONS_EVENTCONFIG_INCLUDEREFERENCES=true",
                     "REGISTRY_HEALTH_FILECHECKERS_0_FILE=/maintenance",
                     "REGISTRY_HEALTH_TCP_0_ADDR=redis:6379",
                     "REGISTRY_HTTP_TLS_CLIENTCAS=[/a.pem, /b.pem]",
                     "REGISTRY_HTTP_TLS_CERTIFICATE=/c.pem",
                     "REGISTRY_HTTP_TLS_KEY=/k.pem",
                     NULL};
    char *past_end[] = {"REGISTRY_NOTIFICATIONS_ENDPOINTS_1_URL=http://x/", NULL};
    char *not_index[] = {"REGISTRY_NOTIFICATIONS_ENDPOINTS_FIRST_URL=http://x/", NULL};
    char *literal[] = {"REGISTRY_PROXY_REMOTEURL=https://registry-1.docker.io",
                       "REGISTRY_PROXY_PASSWORD=*not: yaml", "REGISTRY_PROXY_USERNAME=007", NULL};
    char *implicit[] = {"REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED=true",
                        "REGISTRY_AUTH_SILLY_REALM=r", "REGISTRY_AUTH_SILLY_SERVICE=s", NULL};
    char *bad_addr[] = {"REGISTRY_HTTP_ADDR=nowhere", NULL};
    char *empty[] = {"REGISTRY_HTTP_ADDR=", NULL};
    struct config cfg;
    struct config_diag d;
    const struct config_header *h;

    (void)state;
    load_default(levels, &cfg, &d);
    assert_int_equal(cfg.log.level, LOG_ERROR);
    config_free(&cfg);
    config_diag_free(&d);

    load_default(deprecated, &cfg, &d);
    assert_int_equal(cfg.log.level, LOG_DEBUG);
    config_free(&cfg);
    config_diag_free(&d);

    load_fails(config_default_yaml(), bad_level,
               "loglevel: expected one of error, warn, info, debug, got \"derp\" "
               "(from REGISTRY_LOGLEVEL)");

    load_default(hooks_ok, &cfg, &d);
    assert_int_equal(cfg.log.nhooks, 1);
    assert_string_equal(cfg.log.hooks[0].type, "asdf");
    config_free(&cfg);
    config_diag_free(&d);
    load_fails(config_default_yaml(), hooks_bad, "log.hooks: expected a list of mappings");

    load_default(ignored, &cfg, &d);
    assert_string_equal(cfg.http.addr, ":5000");
    assert_int_equal(d.nwarnings, 4);
    assert_true(has(d.warnings, d.nwarnings, "REGISTRY_DUCKS names no configuration key"));
    assert_true(has(d.warnings, d.nwarnings, "REGISTRY_VERSION is ignored"));
    assert_true(has(d.warnings, d.nwarnings, "REGISTRY_HTTP_FOO names no configuration key"));
    assert_true(has(d.warnings, d.nwarnings, "REGISTRY_HTTP_ADDR_PORT: addr takes a single"));
    config_free(&cfg);
    config_diag_free(&d);

    /* header names match without regard to case; the file's spelling is kept */
    load_default(headers, &cfg, &d);
    assert_int_equal(cfg.http.nheaders, 2);
    h = header(cfg.http.headers, cfg.http.nheaders, "X-Content-Type-Options");
    assert_string_equal(h->name, "X-Content-Type-Options");
    assert_string_equal(h->values[0], "sniff");
    h = header(cfg.http.headers, cfg.http.nheaders, "X-Frame-Options");
    assert_string_equal(h->name, "x-frame-options");
    assert_string_equal(h->values[0], "DENY");
    config_free(&cfg);
    config_diag_free(&d);

    load_default(lists, &cfg, &d);
    assert_int_equal(cfg.notifications.nendpoints, 1);
    assert_string_equal(cfg.notifications.endpoints[0].name, "hook");
    assert_string_equal(cfg.notifications.endpoints[0].url, "http://listener/event");
    assert_int_equal(cfg.notifications.endpoints[0].timeout_ms, 1000);
    assert_true(cfg.notifications.events_includereferences);
    assert_int_equal(cfg.health.nfile, 1);
    assert_string_equal(cfg.health.file[0].file, "/maintenance");
    assert_int_equal(cfg.health.file[0].interval_ms, 10000);
    assert_int_equal(cfg.health.ntcp, 1);
    assert_int_equal(cfg.http.tls.nclientcas, 2);
    assert_string_equal(cfg.http.tls.clientcas[1], "/b.pem");
    config_free(&cfg);
    config_diag_free(&d);

    load_fails(config_default_yaml(), past_end, "index 1 is past the end");
    load_fails(config_default_yaml(), not_index, "expected a list index, got \"FIRST\"");

    load_default(literal, &cfg, &d);
    assert_string_equal(cfg.proxy.password, "*not: yaml");
    assert_string_equal(cfg.proxy.username, "007");
    config_free(&cfg);
    config_diag_free(&d);

    load_default(implicit, &cfg, &d);
    assert_true(cfg.storage.maintenance.readonly);
    assert_int_equal(cfg.auth.type, CONFIG_AUTH_SILLY);
    assert_string_equal(cfg.auth.silly.service, "s");
    config_free(&cfg);
    config_diag_free(&d);

    load_fails(config_default_yaml(), bad_addr,
               "http.addr: expected a string like \":5000\" or \"host:port\", got \"nowhere\" "
               "(from REGISTRY_HTTP_ADDR)");

    load_default(empty, &cfg, &d);
    assert_string_equal(cfg.http.addr, ":5000");
    config_free(&cfg);
    config_diag_free(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Diagnostics                                                                                 */

static void test_unknown_key_warning(void **state)
{
    const char *yaml = "version: 0.1\n"
                       "storage:\n"
                       "  filesystem:\n"
                       "    rootdir: /x\n"
                       "    RootDirectory: /y\n"
                       "http:\n"
                       "  adr: :5000\n"
                       "frobnicate: true\n";
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_ok(yaml, NULL, &cfg, &d);
    assert_int_equal(d.nwarnings, 4);
    assert_true(
        has_exact(d.warnings, d.nwarnings, "unknown key storage.filesystem.rootdir (test.yml:4)"));
    assert_true(has_exact(d.warnings, d.nwarnings,
                          "unknown key storage.filesystem.RootDirectory (did you mean "
                          "rootdirectory?) (test.yml:5)"));
    assert_true(has_exact(d.warnings, d.nwarnings, "unknown key http.adr (test.yml:7)"));
    assert_true(has_exact(d.warnings, d.nwarnings, "unknown key frobnicate (test.yml:8)"));
    assert_string_equal(cfg.storage.filesystem.rootdirectory, "/var/lib/registry");
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_type_errors(void **state)
{
    (void)state;
    load_fails(MIN_YAML "http:\n  addr:\n    port: 5000\n", NULL,
               "http.addr: expected a string like \":5000\" or \"host:port\", got a "
               "mapping (test.yml:5)");
    load_fails(MIN_YAML "  delete:\n    enabled: maybe\n", NULL,
               "storage.delete.enabled: expected true or false, got \"maybe\" (test.yml:5)");
    load_fails(MIN_YAML "proxy:\n  ttl: x\n", NULL,
               "proxy.ttl: expected a duration like \"168h\", got \"x\" (test.yml:5)");
    load_fails(MIN_YAML "http:\n  headers:\n    X-Frame-Options: DENY\n", NULL,
               "http.headers.X-Frame-Options: expected a mapping of header names to lists of "
               "values");
    load_fails(MIN_YAML "http:\n  tls:\n    clientcas: /ca.pem\n", NULL,
               "http.tls.clientcas: expected a list of strings like [a, b], got \"/ca.pem\"");
    load_fails(MIN_YAML "redis:\n  addr: r:6379\n  db: one\n", NULL,
               "redis.db: expected an integer of at least 0, got \"one\"");
    load_fails(MIN_YAML "  cache:\n    blobdescriptor: memcache\n", NULL,
               "storage.cache.blobdescriptor: expected one of inmemory, redis, got \"memcache\"");
    load_fails(MIN_YAML "log:\n  formatter: xml\n", NULL,
               "log.formatter: expected one of text, json, logstash, got \"xml\"");
    load_fails(MIN_YAML "notifications:\n  endpoints: {name: x}\n", NULL,
               "notifications.endpoints: expected a list of mappings, got a mapping");
    load_fails(MIN_YAML "http: [a]\n", NULL, "http: expected a mapping, got a list");
    load_fails("- a\n- b\n", NULL, "test.yml: expected a mapping, got a list");
    load_fails(MIN_YAML "validation:\n  manifests:\n    indexes:\n      platforms: some\n", NULL,
               "validation.manifests.indexes.platforms: expected one of all, none, list");
}

static void test_multiple_errors_collected(void **state)
{
    const char *yaml = "version: 0.1\n"
                       "storage:\n"
                       "  filesystem:\n"
                       "    maxthreads: many\n"
                       "  delete:\n"
                       "    enabled: maybe\n"
                       "http:\n"
                       "  addr: nowhere\n"
                       "  relativeurls: 2\n"
                       "proxy:\n"
                       "  ttl: soon\n";
    struct config cfg;
    struct config_diag d;

    (void)state;
    assert_int_equal(load(yaml, NULL, &cfg, &d), -1);
    if (d.nerrors != 5)
        dump(&d);
    assert_int_equal(d.nerrors, 5);
    assert_true(has(d.errors, d.nerrors, "storage.filesystem.maxthreads"));
    assert_true(has(d.errors, d.nerrors, "storage.delete.enabled"));
    assert_true(has(d.errors, d.nerrors, "http.addr"));
    assert_true(has(d.errors, d.nerrors, "http.relativeurls"));
    assert_true(has(d.errors, d.nerrors, "proxy.ttl"));
    config_diag_free(&d);
}

static void test_storage_driver_count(void **state)
{
    (void)state;
    load_fails("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n  s3:\n"
               "    bucket: b\n",
               NULL, "storage: exactly one storage driver is allowed, found filesystem and s3");
    load_fails("version: 0.1\nhttp:\n  addr: :5000\n", NULL,
               "storage: no storage configuration provided");
    load_fails("version: 0.1\nstorage:\n  delete:\n    enabled: true\n  cache:\n"
               "    blobdescriptor: inmemory\n",
               NULL, "storage: no storage driver configured");
    load_fails("", NULL, "storage: no storage configuration provided");
}

static void test_storage_forms(void **state)
{
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_ok("version: 0.1\nstorage: inmemory\n", NULL, &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_INMEMORY);
    config_free(&cfg);
    config_diag_free(&d);

    load_ok("version: 0.1\nstorage:\n  filesytem:\n    rootdirectory: /x\n", NULL, &cfg, &d);
    assert_int_equal(cfg.storage.driver, CONFIG_STORAGE_OTHER);
    assert_true(has(d.warnings, d.nwarnings, "storage.filesytem: unknown storage driver"));
    config_free(&cfg);
    config_diag_free(&d);

    load_ok(MIN_YAML "  cache:\n    layerinfo: redis\nredis:\n  addr: r:6379\n", NULL, &cfg, &d);
    assert_int_equal(cfg.storage.cache.blobdescriptor, CONFIG_CACHE_REDIS);
    config_free(&cfg);
    config_diag_free(&d);

    load_fails(MIN_YAML "  cache:\n    blobdescriptor: redis\n", NULL,
               "storage.cache.blobdescriptor: redis needs redis.addr");
    load_fails(MIN_YAML "  oss:\n    chunksize: 1024\n", NULL,
               "storage.oss.chunksize: expected an integer of at least 5242880");
}

/* Redis Sentinel: distribution 3's redis.addrs + redis.mastername, or redis.sentinel.*. */
static void test_redis_sentinel(void **state)
{
    struct config cfg, again;
    struct config_diag d;
    char *printed, *reprinted;
    char *env[] = {"REGISTRY_REDIS_MASTERNAME=fromenv", NULL};

    (void)state;
    load_ok(MIN_YAML "  cache:\n    blobdescriptor: redis\nredis:\n  addrs: [s1:26379, "
                     "\"[::1]:26380\"]\n  mastername: mymaster\n  sentinelusername: su\n"
                     "  sentinelpassword: sp\n  password: rp\n",
            NULL, &cfg, &d);
    assert_string_equal(cfg.redis.addr, "");
    assert_int_equal(cfg.redis.naddrs, 0);
    assert_string_equal(cfg.redis.sentinel.mastername, "mymaster");
    assert_int_equal(cfg.redis.sentinel.naddrs, 2);
    assert_string_equal(cfg.redis.sentinel.addrs[0], "s1:26379");
    assert_string_equal(cfg.redis.sentinel.addrs[1], "[::1]:26380");
    assert_string_equal(cfg.redis.sentinel.username, "su");
    assert_string_equal(cfg.redis.sentinel.password, "sp");
    assert_string_equal(cfg.redis.password, "rp");
    /* check-config prints the sentinel section, masked, and it loads back the same */
    printed = print_to_string(&cfg);
    assert_non_null(strstr(printed, "  sentinel:\n    mastername: mymaster\n"));
    assert_null(strstr(printed, "sp"));
    assert_int_equal(config_load_string(printed, strlen(printed), "p.yml", NULL, &again, &d), 0);
    reprinted = print_to_string(&again);
    assert_string_equal(printed, reprinted);
    free(printed);
    free(reprinted);
    config_free(&again);
    config_free(&cfg);
    config_diag_free(&d);

    load_ok(MIN_YAML "redis:\n  sentinel:\n    mastername: m\n    addrs: [a:1, b:2, c:3]\n"
                     "    password: x\nhttp:\n  secret: s\ncluster:\n  advertise: http://n:5000\n",
            NULL, &cfg, &d);
    assert_string_equal(cfg.redis.sentinel.mastername, "m");
    assert_int_equal(cfg.redis.sentinel.naddrs, 3);
    assert_string_equal(cfg.redis.sentinel.addrs[2], "c:3");
    assert_string_equal(cfg.redis.sentinel.password, "x");
    assert_string_equal(cfg.redis.sentinel.username, "");
    config_free(&cfg);
    config_diag_free(&d);

    load_ok(MIN_YAML "redis:\n  addrs: [a:1]\n", env, &cfg, &d);
    assert_string_equal(cfg.redis.sentinel.mastername, "fromenv");
    assert_string_equal(cfg.redis.sentinel.addrs[0], "a:1");
    config_free(&cfg);
    config_diag_free(&d);

    /* without a master name redis.addrs stays the plain server list */
    load_ok(MIN_YAML "redis:\n  addrs: [a:1, b:2]\n", NULL, &cfg, &d);
    assert_string_equal(cfg.redis.addr, "a:1");
    assert_int_equal(cfg.redis.sentinel.naddrs, 0);
    config_free(&cfg);
    config_diag_free(&d);

    load_fails(MIN_YAML "redis:\n  mastername: m\n", NULL, "redis.mastername: needs the sentinels");
    load_fails(MIN_YAML "redis:\n  sentinel:\n    mastername: m\n", NULL,
               "redis.sentinel.mastername: needs the sentinels");
    load_fails(MIN_YAML "redis:\n  sentinel:\n    addrs: [a:1]\n", NULL,
               "redis.sentinel.addrs: needs redis.sentinel.mastername");
    load_fails(MIN_YAML "redis:\n  addr: r:6379\n  mastername: m\n  addrs: [a:1]\n", NULL,
               "redis.addr: not with redis.mastername");
    load_fails(MIN_YAML "redis:\n  mastername: m\n  addrs: [a:1, nope]\n", NULL,
               "redis.addrs[1]: expected a sentinel like \"localhost:26379\", got \"nope\"");
    load_fails(MIN_YAML "redis:\n  sentinel:\n    mastername: m\n    addrs: [\"a b:1\"]\n", NULL,
               "redis.sentinel.addrs[0]: expected a sentinel");
}

static void test_durations(void **state)
{
    static const struct {
        const char *text;
        int64_t ms;
    } ok[] = {{"10s", 10000},    {"300ms", 300},     {"1h30m", 5400000},      {"24h", 86400000},
              {"1.5s", 1500},    {"500us", 1},       {"2h45m30.5s", 9930500}, {"0", 0},
              {"0s", 0},         {"\"10s\"", 10000}, {"1000000000", 1000},    {"90m", 5400000},
              {"1\xc2\xb5s", 1}, {"", 604800000}};
    static const char *const bad[] = {"x", "10", "-1s", "1d", "s", "1.s5", "10 s", "1e3s"};
    char yaml[256];

    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct config cfg;
        struct config_diag d;
        snprintf(yaml, sizeof(yaml), MIN_YAML "proxy:\n  ttl: %s\n", ok[i].text);
        load_ok(yaml, NULL, &cfg, &d);
        if (cfg.proxy.ttl_ms != ok[i].ms)
            fprintf(stderr, "%s -> %lld\n", ok[i].text, (long long)cfg.proxy.ttl_ms);
        assert_int_equal(cfg.proxy.ttl_ms, ok[i].ms);
        config_free(&cfg);
        config_diag_free(&d);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct config cfg;
        struct config_diag d;
        snprintf(yaml, sizeof(yaml), MIN_YAML "proxy:\n  ttl: %s\n", bad[i]);
        /* "10" is accepted (nanoseconds, as the reference) with a warning */
        if (!strcmp(bad[i], "10")) {
            load_ok(yaml, NULL, &cfg, &d);
            assert_int_equal(cfg.proxy.ttl_ms, 1);
            assert_true(has(d.warnings, d.nwarnings, "proxy.ttl: 10 has no unit"));
            config_free(&cfg);
            config_diag_free(&d);
            continue;
        }
        assert_int_equal(load(yaml, NULL, &cfg, &d), -1);
        assert_true(has(d.errors, d.nerrors, "proxy.ttl: expected a duration"));
        config_diag_free(&d);
    }
    /* zero means the default where the reference says so */
    {
        struct config cfg;
        struct config_diag d;
        load_ok(MIN_YAML "health:\n  storagedriver:\n    enabled: true\n    interval: 0s\n", NULL,
                &cfg, &d);
        assert_int_equal(cfg.health.storagedriver.interval_ms, 10000);
        config_free(&cfg);
        config_diag_free(&d);
    }
}

static void test_booleans_and_ints(void **state)
{
    static const struct {
        const char *text;
        bool value;
    } words[] = {{"true", true}, {"True", true},    {"yes", true}, {"on", true},
                 {"Y", true},    {"false", false},  {"NO", false}, {"off", false},
                 {"n", false},   {"\"true\"", true}};
    struct config cfg;
    struct config_diag d;
    char yaml[256];

    (void)state;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        snprintf(yaml, sizeof(yaml), MIN_YAML "  delete:\n    enabled: %s\n", words[i].text);
        load_ok(yaml, NULL, &cfg, &d);
        assert_int_equal(cfg.storage.delete_enabled, words[i].value);
        config_free(&cfg);
        config_diag_free(&d);
    }
    load_ok("version: 0.1\nstorage:\n  filesystem:\n    maxthreads: 10\n", NULL, &cfg, &d);
    assert_int_equal(cfg.storage.filesystem.maxthreads, 25);
    assert_true(has(d.warnings, d.nwarnings, "storage.filesystem.maxthreads: 10 is below"));
    config_free(&cfg);
    config_diag_free(&d);

    load_ok(MIN_YAML "  cache:\n    blobdescriptorsize: 0x100\n", NULL, &cfg, &d);
    assert_int_equal(cfg.storage.cache.blobdescriptorsize, 256);
    config_free(&cfg);
    config_diag_free(&d);

    load_fails(MIN_YAML "redis:\n  addr: r:6379\n  db: -1\n", NULL,
               "redis.db: expected an integer of at least 0, got \"-1\"");
    load_fails(MIN_YAML "redis:\n  addr: r:6379\n  db: 99999999999999999999\n", NULL,
               "redis.db: expected an integer");
    load_fails(MIN_YAML "tags:\n  maxtags: -1\n", NULL, "tags.maxtags");
}

static void test_secrets_masked(void **state)
{
    const char *yaml = "version: 0.1\n"
                       "storage:\n"
                       "  oss:\n"
                       "    accesskeyid: visible-id\n"
                       "    accesskeysecret: OSS-SECRET-VALUE\n"
                       "    region: r\n"
                       "    bucket: b\n"
                       "http:\n"
                       "  secret: HTTP-SECRET-VALUE\n"
                       "redis:\n"
                       "  addr: r:6379\n"
                       "  password: REDIS-PASSWORD-VALUE\n"
                       "proxy:\n"
                       "  remoteurl: https://registry-1.docker.io\n"
                       "  username: hubuser\n"
                       "  password: HUB-PASSWORD-VALUE\n"
                       "reporting:\n"
                       "  bugsnag:\n"
                       "    apikey: BUGSNAG-KEY-VALUE\n"
                       "notifications:\n"
                       "  endpoints:\n"
                       "    - name: l\n"
                       "      url: https://l.example.com/\n"
                       "      headers:\n"
                       "        Authorization: [Bearer TOKEN-VALUE]\n"
                       "        X-Trace: [visible-header]\n"
                       "middleware:\n"
                       "  storage:\n"
                       "    - name: m\n"
                       "      options:\n"
                       "        privatekey: MIDDLEWARE-KEY-VALUE\n"
                       "        db_password: MIDDLEWARE-PASSWORD-VALUE\n";
    static const char *const secrets[] = {"OSS-SECRET-VALUE",     "HTTP-SECRET-VALUE",
                                          "REDIS-PASSWORD-VALUE", "HUB-PASSWORD-VALUE",
                                          "BUGSNAG-KEY-VALUE",    "TOKEN-VALUE",
                                          "MIDDLEWARE-KEY-VALUE", "MIDDLEWARE-PASSWORD-VALUE"};
    struct config cfg;
    struct config_diag d;
    char *out;

    (void)state;
    load_ok(yaml, NULL, &cfg, &d);
    out = print_to_string(&cfg);
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
        if (strstr(out, secrets[i]))
            fprintf(stderr, "%s leaked in:\n%s", secrets[i], out);
        assert_null(strstr(out, secrets[i]));
    }
    assert_non_null(strstr(out, "accesskeysecret: \"*****\""));
    assert_non_null(strstr(out, "password: \"*****\""));
    assert_non_null(strstr(out, "Authorization: [\"*****\"]"));
    assert_non_null(strstr(out, "visible-id"));
    assert_non_null(strstr(out, "visible-header"));
    assert_non_null(strstr(out, "username: hubuser"));
    /* the struct itself keeps the real values */
    assert_string_equal(cfg.proxy.password, "HUB-PASSWORD-VALUE");
    free(out);
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_version(void **state)
{
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_fails("storage: inmemory\n", NULL, "version: required");
    load_fails("version: 0.2\nstorage: inmemory\n", NULL, "version: expected \"0.1\", got \"0.2\"");
    load_fails("version: [0.1]\nstorage: inmemory\n", NULL, "version: expected \"0.1\"");
    load_ok("version: '0.1'\nstorage: inmemory\n", NULL, &cfg, &d);
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_yaml_errors_and_limits(void **state)
{
    const char *laughs = "version: 0.1\n"
                         "storage: inmemory\n"
                         "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                         "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                         "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                         "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                         "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    char deep[400];
    size_t o = 0;
    char *big;

    (void)state;
    load_fails("version: 0.1\nstorage:\n  inmemory: [\n", NULL, "test.yml:4: YAML syntax error");
    load_fails("version: 0.1\nstorage: *nothing\n", NULL, "unknown alias *nothing");
    load_fails(laughs, NULL, "too");
    for (int i = 0; i < 60; i++)
        o += (size_t)snprintf(deep + o, sizeof(deep) - o, "[");
    deep[o] = '\0';
    load_fails(deep, NULL, "nested more than");
    load_fails("version: 0.1\nstorage: \"in\\0memory\"\n", NULL, "NUL byte");
    big = calloc(1, 2 * 1024 * 1024);
    memset(big, '#', 2 * 1024 * 1024 - 1);
    load_fails(big, NULL, "larger than");
    free(big);
}

static void test_anchors_and_merge_keys(void **state)
{
    const char *yaml = "version: 0.1\n"
                       "storage: inmemory\n"
                       "notifications:\n"
                       "  endpoints:\n"
                       "    - &ep\n"
                       "      name: one\n"
                       "      url: http://one/\n"
                       "      timeout: 2s\n"
                       "    - <<: *ep\n"
                       "      name: two\n"
                       "http:\n"
                       "  addr: :5000\n"
                       "  addr: :6000\n";
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_ok(yaml, NULL, &cfg, &d);
    assert_int_equal(cfg.notifications.nendpoints, 2);
    assert_string_equal(cfg.notifications.endpoints[1].name, "two");
    assert_string_equal(cfg.notifications.endpoints[1].url, "http://one/");
    assert_int_equal(cfg.notifications.endpoints[1].timeout_ms, 2000);
    assert_string_equal(cfg.http.addr, ":6000");
    assert_true(has_exact(d.warnings, d.nwarnings,
                          "duplicate key \"addr\": the later value is used (test.yml:13)"));
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_auth(void **state)
{
    (void)state;
    load_fails(MIN_YAML "auth:\n  silly: {realm: r, service: s}\n  htpasswd: {realm: r, "
                        "path: /p}\n",
               NULL, "auth: exactly one auth type is allowed");
    load_fails(MIN_YAML "auth:\n  ldap: {}\n", NULL, "auth.ldap: unknown auth type");
    load_fails(MIN_YAML "auth:\n  htpasswd:\n    realm: r\n", NULL, "auth.htpasswd.path: required");
    load_fails(MIN_YAML "auth:\n  token:\n    realm: r\n    service: s\n    issuer: i\n", NULL,
               "auth.token: rootcertbundle or jwks is required");
}

static void test_http_checks(void **state)
{
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_ok(MIN_YAML "http:\n  net: unix\n  addr: /run/regmirror.sock\n", NULL, &cfg, &d);
    assert_string_equal(cfg.http.net, "unix");
    config_free(&cfg);
    config_diag_free(&d);
    load_ok(MIN_YAML "http:\n  addr: '[::1]:5000'\n", NULL, &cfg, &d);
    config_free(&cfg);
    config_diag_free(&d);

    load_fails(MIN_YAML "http:\n  net: udp\n", NULL, "http.net: expected one of tcp, unix");
    load_fails(MIN_YAML "http:\n  addr: :99999\n", NULL, "http.addr: expected a string like");
    load_fails(MIN_YAML "http:\n  prefix: registry/\n", NULL, "http.prefix: expected a path like");
    load_fails(MIN_YAML "http:\n  tls:\n    certificate: /c.pem\n", NULL,
               "http.tls.key: required when http.tls.certificate is set");
    load_fails(MIN_YAML "http:\n  tls:\n    certificate: /c\n    key: /k\n    minimumtls: ssl3\n",
               NULL, "http.tls.minimumtls: expected one of tls1.0, tls1.1, tls1.2, tls1.3");
    load_fails(MIN_YAML "http:\n  tls:\n    certificate: /c\n    key: /k\n    ciphersuites: "
                        "[TLS_FAST]\n",
               NULL, "http.tls.ciphersuites[0]: unknown cipher suite \"TLS_FAST\"");
    load_fails(MIN_YAML "proxy:\n  remoteurl: registry-1.docker.io\n", NULL,
               "proxy.remoteurl: expected a URL");
    load_fails(MIN_YAML "notifications:\n  endpoints:\n    - name: x\n", NULL,
               "notifications.endpoints[0].url: expected a URL");

    load_ok(MIN_YAML "http:\n  host: registry.example.com\n", NULL, &cfg, &d);
    assert_true(has(d.warnings, d.nwarnings, "http.host: \"registry.example.com\" is not a URL"));
    config_free(&cfg);
    config_diag_free(&d);
}

/* proxy.push, proxy.pushusers, proxy.shadow (mirror/writepolicy.h). */
static void test_proxy_writes(void **state)
{
    struct config cfg;
    struct config_diag d;
#define PROXY_YAML "proxy:\n  remoteurl: https://registry-1.docker.io\n"
    const char *proxy = MIN_YAML PROXY_YAML;
    const char *authed = MIN_YAML "auth:\n  htpasswd:\n    realm: r\n    path: /p\n" PROXY_YAML;
    char yaml[512];

    (void)state;
    load_ok(proxy, NULL, &cfg, &d);
    assert_false(cfg.proxy.push);
    assert_false(cfg.proxy.shadow);
    assert_int_equal(cfg.proxy.npushusers, 0);
    char *text = print_to_string(&cfg);
    assert_non_null(strstr(text, "push: false"));
    assert_non_null(strstr(text, "shadow: false"));
    free(text);
    config_free(&cfg);
    config_diag_free(&d);

    snprintf(yaml, sizeof(yaml), "%s  push: true\n  shadow: true\n  pushusers: [ann, bob]\n",
             authed);
    load_ok(yaml, NULL, &cfg, &d);
    assert_int_equal(d.nwarnings, 0);
    assert_true(cfg.proxy.push);
    assert_true(cfg.proxy.shadow);
    assert_int_equal(cfg.proxy.npushusers, 2);
    assert_string_equal(cfg.proxy.pushusers[0], "ann");
    assert_string_equal(cfg.proxy.pushusers[1], "bob");
    config_free(&cfg);
    config_diag_free(&d);

    char *env[] = {"REGISTRY_PROXY_PUSH=true",         "REGISTRY_PROXY_SHADOW=true",
                   "REGISTRY_PROXY_PUSHUSERS=[carol]", "REGISTRY_AUTH_HTPASSWD_REALM=r",
                   "REGISTRY_AUTH_HTPASSWD_PATH=/p",   NULL};
    load_ok(proxy, env, &cfg, &d);
    assert_true(cfg.proxy.push);
    assert_true(cfg.proxy.shadow);
    assert_int_equal(cfg.proxy.npushusers, 1);
    assert_string_equal(cfg.proxy.pushusers[0], "carol");
    config_free(&cfg);
    config_diag_free(&d);
    char *off[] = {"REGISTRY_PROXY_PUSH=false", NULL};
    snprintf(yaml, sizeof(yaml), "%s  push: true\n", proxy);
    load_ok(yaml, off, &cfg, &d);
    assert_false(cfg.proxy.push);
    config_free(&cfg);
    config_diag_free(&d);

    snprintf(yaml, sizeof(yaml), "%s  pushusers: [ann]\n", authed);
    load_ok(yaml, NULL, &cfg, &d);
    assert_true(
        has(d.warnings, d.nwarnings, "proxy.pushusers: has no effect without proxy.push: true"));
    config_free(&cfg);
    config_diag_free(&d);

    snprintf(yaml, sizeof(yaml), "%s  push: maybe\n", proxy);
    load_fails(yaml, NULL, "proxy.push: expected true or false, got \"maybe\" (test.yml:6)");
    char *bad[] = {"REGISTRY_PROXY_SHADOW=often", NULL};
    load_fails(proxy, bad,
               "proxy.shadow: expected true or false, got \"often\" (from REGISTRY_PROXY_SHADOW)");
    snprintf(yaml, sizeof(yaml), "%s  pushusers: ann\n", proxy);
    load_fails(yaml, NULL, "proxy.pushusers: expected");
    snprintf(yaml, sizeof(yaml), "%s  push: true\n  pushusers: [ann]\n", proxy);
    load_fails(yaml, NULL, "proxy.pushusers: needs client auth (auth.htpasswd)");
}

static void test_validation_flags(void **state)
{
    struct config cfg;
    struct config_diag d;

    (void)state;
    load_ok(MIN_YAML "validation:\n  disabled: true\n", NULL, &cfg, &d);
    assert_false(cfg.validation.enabled);
    config_free(&cfg);
    config_diag_free(&d);
    load_ok(MIN_YAML "validation:\n  disabled: true\n  enabled: true\n", NULL, &cfg, &d);
    assert_true(cfg.validation.enabled);
    config_free(&cfg);
    config_diag_free(&d);
    load_ok(MIN_YAML "validation:\n  enabled: false\n", NULL, &cfg, &d);
    assert_true(cfg.validation.enabled);
    config_free(&cfg);
    config_diag_free(&d);
    load_ok(MIN_YAML
            "validation:\n  manifests:\n    urls:\n      allow: ['^https?://x\\.example/']\n"
            "      deny: ['^https?://x\\.example/nope']\n",
            NULL, &cfg, &d);
    assert_int_equal(cfg.validation.urls.nallow, 1);
    assert_string_equal(cfg.validation.urls.deny[0], "^https?://x\\.example/nope");
    config_free(&cfg);
    config_diag_free(&d);
    /* the patterns must compile as the registry compiles them (POSIX extended) */
    load_fails(MIN_YAML "validation:\n  manifests:\n    urls:\n      deny: ['ok', '(open']\n", NULL,
               "validation.manifests.urls.deny[1]: \"(open\" is not a POSIX extended regular "
               "expression");
    load_fails(MIN_YAML "validation:\n  manifests:\n    urls:\n      allow: ['^https://h\\d/']\n",
               NULL,
               "validation.manifests.urls.allow[0]: \"^https://h\\x5cd/\" is not a POSIX "
               "extended regular expression: Go's \\d (use [0-9]) has no POSIX meaning");
    /* patterns glibc would expand into gigabytes at start are refused, as Go refuses them */
    load_fails(MIN_YAML "validation:\n  manifests:\n    urls:\n      allow: ['^https://a+++++/']\n",
               NULL, "a repetition of a repetition");
    load_fails(MIN_YAML "validation:\n  manifests:\n    urls:\n      allow: ['a**']\n", NULL,
               "a repetition of a repetition");
    load_fails(MIN_YAML "validation:\n  manifests:\n    urls:\n      allow: ['x{1001}']\n", NULL,
               "a repeat count above 1000");
    load_fails(MIN_YAML
               "validation:\n  manifests:\n    urls:\n      allow: ['((a{100}){100}){100}']\n",
               NULL, "repeats that expand to more than 20000 parts");
    load_fails(MIN_YAML "validation:\n  manifests:\n    urls:\n      allow: "
                        "['(((((((((((((((((((((((((((((((((a)))))))))))))))))))))))))))))))))']\n",
               NULL, "groups nested more than 32 deep");
    /* Go's lazy forms, brackets with ']' or classes, escapes and counts within the limits */
    load_ok(
        MIN_YAML
        "validation:\n  manifests:\n    urls:\n      allow: ['^https?://([^/]+\\.)*?x\\.example/', "
        "'[]+*[:alpha:]]+', 'a\\++', '(ab){2,1000}c{3,}', '[^]{]{5}']\n",
        NULL, &cfg, &d);
    assert_int_equal(cfg.validation.urls.nallow, 5);
    config_free(&cfg);
    config_diag_free(&d);
}

static void test_load_file_errors(void **state)
{
    struct config cfg;
    struct config_diag d;

    (void)state;
    assert_int_equal(config_load_file("/nonexistent/config.yml", NULL, &cfg, &d), -1);
    assert_int_equal(d.nerrors, 1);
    assert_non_null(strstr(d.errors[0], "/nonexistent/config.yml: No such file"));
    config_diag_free(&d);
    config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_matches_conf_file),
        cmocka_unit_test(test_default_values),
        cmocka_unit_test(test_fixtures_load),
        cmocka_unit_test(test_print_roundtrip),
        cmocka_unit_test(test_redis_sentinel),
        cmocka_unit_test(test_fixture_values),
        cmocka_unit_test(test_env_filesystem_addr),
        cmocka_unit_test(test_env_oss),
        cmocka_unit_test(test_env_redis),
        cmocka_unit_test(test_env_htpasswd_tls),
        cmocka_unit_test(test_env_blocks_combined),
        cmocka_unit_test(test_env_storage_selection),
        cmocka_unit_test(test_env_edge_cases),
        cmocka_unit_test(test_unknown_key_warning),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_multiple_errors_collected),
        cmocka_unit_test(test_storage_driver_count),
        cmocka_unit_test(test_storage_forms),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_booleans_and_ints),
        cmocka_unit_test(test_secrets_masked),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_yaml_errors_and_limits),
        cmocka_unit_test(test_anchors_and_merge_keys),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_http_checks),
        cmocka_unit_test(test_proxy_writes),
        cmocka_unit_test(test_validation_flags),
        cmocka_unit_test(test_load_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
