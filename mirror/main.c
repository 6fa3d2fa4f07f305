/* regmirror: serve | garbage-collect | cache | check-config | version. */
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cache.h"
#include "cli_cache.h"
#include "cluster.h"
#include "config.h"
#include "httpc.h"
#include "gc.h"
#include "health.h"
#include "log.h"
#include "maintenance.h"
#include "metrics.h"
#include "notify.h"
#include "offload.h"
#include "proxy.h"
#include "realm.h"
#include "registry.h"
#include "server.h"
#include "status.h"
#include "storage.h"
#include "storage_watch.h"

#ifndef REGMIRROR_VERSION
#define REGMIRROR_VERSION "dev"
#endif

extern char **environ;

static void usage(FILE *f)
{
    fprintf(f, "usage: regmirror serve [CONFIG]\n"
               "       regmirror check-config [CONFIG]\n"
               "       regmirror garbage-collect [--dry-run] [--delete-untagged] [--force] "
               "CONFIG\n"
               "       regmirror cache ls|rm|verify|warm CONFIG ...   (regmirror cache help)\n"
               "       regmirror version\n"
               "\n"
               "CONFIG is a registry config.yml; without it the embedded default is used.\n"
               "REGISTRY_* environment variables override its keys, as for registry:2.\n");
}

/* Loads the config (file or embedded default) and prints every warning and error. */
static int load_config(const char *path, struct config *cfg)
{
    struct config_diag diag = {0};
    const char *def = config_default_yaml();
    int rc = path ? config_load_file(path, environ, cfg, &diag)
                  : config_load_string(def, strlen(def), "embedded default", environ, cfg, &diag);
    for (size_t i = 0; i < diag.nwarnings; i++)
        fprintf(stderr, "warning: %s\n", diag.warnings[i]);
    for (size_t i = 0; i < diag.nerrors; i++)
        fprintf(stderr, "error: %s\n", diag.errors[i]);
    config_diag_free(&diag);
    return rc;
}

/*
 * SIGTERM and SIGINT: the first drains the server for up to http.draintimeout (no new
 * connection, requests in flight finish), then the loop ends and the teardown in serve() cuts
 * whatever is left; the second, or a draintimeout of 0, ends the loop at once.
 */
struct shutdown {
    struct event_base *base;
    struct server *srv;
    int64_t drain_ms;
    struct event *timer; /* the end of the drain time */
    bool draining;
};

static void on_drained(void *arg)
{
    struct shutdown *sd = arg;
    log_info("shutdown: every connection has closed");
    event_base_loopexit(sd->base, NULL);
}

static void on_drain_timeout(evutil_socket_t fd, short events, void *arg)
{
    struct shutdown *sd = arg;
    log_warn("shutdown: the drain time (http.draintimeout) is over; cutting the requests still "
             "running");
    event_base_loopexit(sd->base, NULL);
}

static void on_signal(evutil_socket_t sig, short events, void *arg)
{
    struct shutdown *sd = arg;
    if (sd->draining) {
        log_info("signal %d again: stopping now", (int)sig);
        event_base_loopexit(sd->base, NULL);
        return;
    }
    sd->draining = true;
    if (sd->drain_ms <= 0) {
        log_info("signal %d: shutting down", (int)sig);
        event_base_loopexit(sd->base, NULL);
        return;
    }
    log_info("signal %d: shutting down; requests in flight have %lld ms to finish (another "
             "signal stops at once)",
             (int)sig, (long long)sd->drain_ms);
    struct timeval tv = {.tv_sec = sd->drain_ms / 1000, .tv_usec = sd->drain_ms % 1000 * 1000};
    evtimer_add(sd->timer, &tv);
    server_drain(sd->srv, on_drained, sd);
}

static void log_from(const struct config *cfg)
{
    log_reset();
    log_setup(cfg->log.level, cfg->log.formatter);
    for (size_t i = 0; i < cfg->log.nfields; i++)
        log_add_field(cfg->log.fields[i].key, cfg->log.fields[i].value);
}

/*
 * SIGHUP (systemd's ExecReload): the config is read again and its log settings applied; the
 * rest needs a restart. The htpasswd file needs no signal: auth re-reads it when it changes.
 */
static void on_reload(evutil_socket_t sig, short events, void *arg)
{
    const char *path = arg;
    struct config cfg;
    if (load_config(path, &cfg) != 0) {
        log_error("reload: the configuration is not valid, nothing changed");
        return;
    }
    /* before the new level, which may hide it */
    log_info("reload: applying the log settings (other changes need a restart)");
    log_from(&cfg);
    config_free(&cfg);
}

/* storage.oss as the OSS driver's settings; the tuning knobs keep their defaults. */
static void oss_config_from(struct storage_oss_config *oc, const struct config *cfg)
{
    memset(oc, 0, sizeof(*oc));
    oc->accesskeyid = cfg->storage.oss.accesskeyid;
    oc->accesskeysecret = cfg->storage.oss.accesskeysecret;
    oc->region = cfg->storage.oss.region;
    oc->endpoint = cfg->storage.oss.endpoint;
    oc->internal = cfg->storage.oss.internal;
    oc->bucket = cfg->storage.oss.bucket;
    oc->encrypt = cfg->storage.oss.encrypt;
    oc->encryptionkeyid = cfg->storage.oss.encryptionkeyid;
    oc->secure = cfg->storage.oss.secure;
    oc->chunksize = cfg->storage.oss.chunksize > 0 ? (uint64_t)cfg->storage.oss.chunksize : 0;
    oc->rootdirectory = cfg->storage.oss.rootdirectory;
}

/*
 * Worker threads for a remote driver's blocking requests (offload.h). They mostly wait on
 * the network, so there are more of them than cores; the OSS driver pools its connections.
 */
#define REMOTE_STORAGE_THREADS 16

/* The configured driver; NULL on error (logged). */
static struct storage *open_storage(const struct config *cfg)
{
    struct storage_oss_config oc;
    switch (cfg->storage.driver) {
    case CONFIG_STORAGE_FILESYSTEM:
        return storage_fs_new(cfg->storage.filesystem.rootdirectory);
    case CONFIG_STORAGE_OSS:
        oss_config_from(&oc, cfg);
        return storage_oss_new(&oc);
    default:
        log_error("storage driver %s is not available in this build yet",
                  cfg->storage.driver_name ? cfg->storage.driver_name : "(unknown)");
        return NULL;
    }
}

/* storage.cache.blobdescriptor: *out stays NULL (no cache) when none is configured. */
static int open_cache(struct event_base *base, const struct config *cfg, struct cache **out)
{
    struct cache_redis_config rc;
    switch (cfg->storage.cache.blobdescriptor) {
    case CONFIG_CACHE_REDIS:
        if (cfg->redis.tls.enabled) {
            log_error("redis.tls.enabled: TLS to Redis is not supported by this build's hiredis");
            return -1;
        }
        cache_redis_config_from(&rc, cfg);
        *out = cache_redis_new(base, &rc);
        break;
    case CONFIG_CACHE_INMEMORY:
        *out = cache_inmemory_new((size_t)cfg->storage.cache.blobdescriptorsize);
        break;
    default:
        return 0;
    }
    return *out ? 0 : -1;
}

static int serve(const char *path)
{
    int rc = 1;
    struct config cfg;
    struct event_base *base = NULL;
    struct event *sigint = NULL, *sigterm = NULL, *sighup = NULL;
    struct storage *st = NULL;
    struct registry *reg = NULL;
    struct server *srv = NULL;
    struct proxy *px = NULL;
    struct cluster *cl = NULL;
    struct notify *nt = NULL;
    struct health *hl = NULL;
    struct status *sp = NULL;
    struct maintenance *mt = NULL;
    struct cache *cache = NULL;
    struct httpc *hc = NULL; /* one libcurl multi on the loop for upstreams, webhooks, probes */
    struct offload *ol = NULL;
    int lockfd = -1;
    struct shutdown sd = {0};
    if (load_config(path, &cfg) != 0)
        return 1;
    log_from(&cfg);
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (!base)
        goto out;
    st = metrics_storage_wrap(open_storage(&cfg)); /* counts storage errors */
    st = storage_watch_wrap(st);                   /* sees links written during eviction */
    if (!st || gc_serve_lock(&cfg, &lockfd) != 0)
        goto out;
    if (open_cache(base, &cfg, &cache) != 0)
        goto out;
    hc = httpc_new(base);
    /* Filesystem calls are local syscalls and stay on the loop; OSS calls go to threads. */
    ol = offload_new(base,
                     cfg.storage.driver == CONFIG_STORAGE_FILESYSTEM ? 0 : REMOTE_STORAGE_THREADS);
    if (!hc || !ol)
        goto out;
    struct registry_url_policy urls = {
        .enabled = cfg.validation.enabled,
        .allow = cfg.validation.urls.allow,
        .nallow = cfg.validation.urls.nallow,
        .deny = cfg.validation.urls.deny,
        .ndeny = cfg.validation.urls.ndeny,
    };
    struct registry_opts opts = {.delete_enabled = cfg.storage.delete_enabled, .urls = &urls};
    reg = registry_new(st, &opts);
    if (!reg)
        goto out;
    if (cfg.proxy.remoteurl[0]) {
        px = proxy_new(base, &cfg, reg, hc, ol);
        if (!px)
            goto out;
        cl = cluster_new(base, &cfg);
        if (cfg.cluster.advertise[0] && !cl)
            goto out;
        proxy_set_cluster(px, cl);
    }
    nt = notify_new(base, &cfg, hc);
    hl = health_new(base, &cfg, st, hc, ol);
    sp = status_new(base, REGMIRROR_VERSION, &cfg, px, nt);
    srv = server_new(base, &cfg, reg, px, cache, ol);
    if (!nt || !hl || !sp || !srv || server_observe(srv, base, hl, sp) != 0)
        goto out;
    mt = maintenance_new(base, &cfg, st, reg, px, cache, ol);
    if (!mt)
        goto out;
    sd = (struct shutdown){.base = base, .srv = srv, .drain_ms = cfg.http.draintimeout_ms};
    sd.timer = evtimer_new(base, on_drain_timeout, &sd);
    sigint = evsignal_new(base, SIGINT, on_signal, &sd);
    sigterm = evsignal_new(base, SIGTERM, on_signal, &sd);
    sighup = evsignal_new(base, SIGHUP, on_reload, (void *)path);
    if (!sd.timer || !sigint || !sigterm || !sighup || evsignal_add(sigint, NULL) != 0 ||
        evsignal_add(sigterm, NULL) != 0 || evsignal_add(sighup, NULL) != 0)
        goto out;
    log_info("regmirror %s serving, storage %s", REGMIRROR_VERSION, st->ops->name);
    event_base_dispatch(base);
    rc = 0;
out:
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (sighup)
        event_free(sighup);
    if (sd.timer)
        event_free(sd.timer);
    maintenance_free(mt);
    /* The server's connections first: aborting its requests detaches them from the proxy's
     * fetches, and no request can come in any more. */
    server_close(srv);
    status_free(sp); /* no debug request can come in any more */
    proxy_free(px);
    health_free(hl);
    /* Before what its jobs use: the api, the registry, the storage, the cache. Every job's
     * done has run when it returns. */
    offload_free(ol);
    cluster_free(cl); /* after the jobs: an import's done gives up its lease */
    server_free(srv);
    notify_free(nt);
    /* Last of the network users: each one above cancelled its own requests. */
    httpc_free(hc);
    registry_free(reg);
    /* After the server: its requests cancelled their lookups when they were aborted. */
    cache_free(cache);
    storage_free(st);
    gc_serve_unlock(lockfd);
    if (base)
        event_base_free(base);
    config_free(&cfg);
    log_reset();
    return rc;
}

static int garbage_collect(int argc, char **argv)
{
    struct gc_opts opts;
    const char *path;
    struct config cfg;
    if (gc_parse_args(argc, argv, &opts, &path) != 0)
        return 2;
    if (load_config(path, &cfg) != 0)
        return 1;
    log_setup(cfg.log.level, cfg.log.formatter);
    /* The bare driver: no metrics or maintenance wrappers in the offline command. */
    struct storage *st = open_storage(&cfg);
    int rc = st ? gc_main(&cfg, st, &opts) : 1;
    storage_free(st);
    config_free(&cfg);
    log_reset();
    return rc;
}

/* A YAML comment per upstream account: which token realms it goes to. */
static void print_credentials_rule(const char *url, const char *user)
{
    char rule[320];
    if (!url || !url[0] || !user || !user[0])
        return;
    if (realm_describe(url, rule, sizeof(rule)) == 0)
        printf("# proxy: the account of %s goes to %s\n", url, rule);
}

static int check_config(const char *path)
{
    struct config cfg;
    if (load_config(path, &cfg) != 0) {
        fprintf(stderr, "configuration is not valid\n");
        return 1;
    }
    config_print(&cfg, stdout);
    print_credentials_rule(cfg.proxy.remoteurl, cfg.proxy.username);
    for (size_t i = 0; i < cfg.proxy.nremotes; i++)
        print_credentials_rule(cfg.proxy.remotes[i].remoteurl, cfg.proxy.remotes[i].username);
    config_free(&cfg);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    const char *path = argc > 2 ? argv[2] : NULL;
    if (strcmp(cmd, "garbage-collect") == 0)
        return garbage_collect(argc - 2, argv + 2);
    if (strcmp(cmd, "cache") == 0) {
        const struct cli_cache_env env = {load_config, open_storage};
        return cli_cache_main(argc - 2, argv + 2, &env);
    }
    if (argc > 3) {
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "serve") == 0)
        return serve(path);
    if (strcmp(cmd, "check-config") == 0)
        return check_config(path);
    if (strcmp(cmd, "version") == 0) {
        printf("regmirror %s\n", REGMIRROR_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
