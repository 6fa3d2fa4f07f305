#ifndef REGMIRROR_CONFIG_H
#define REGMIRROR_CONFIG_H
/*
 * config: reads the registry's config.yml (the schema of distribution's "registry:2", version
 * 0.1) into one typed struct, applies REGISTRY_* environment overrides the way distribution
 * does, and validates the merged result.
 *
 * Every problem is reported with the key path it concerns and, where known, the line of the
 * file or the environment variable the value came from:
 *   http.addr: expected a string like ":5000" or "host:port", got "x" (config.yml:9)
 *   unknown key storage.filesystem.rootdir (config.yml:5)
 * Unknown keys are warnings; wrong types or values are errors, and all of them are collected.
 *
 * Values:
 *   - Durations are Go duration strings ("300ms", "10s", "1h30m", "168h") stored as
 *     milliseconds, rounded up so that a non-zero duration never becomes 0. A bare integer is
 *     read as nanoseconds, as distribution does, with a warning. Negative durations are errors.
 *   - Booleans accept YAML 1.1 words: true/false, yes/no, on/off, y/n (any of the usual cases).
 *   - Integers are decimal, 0x hex or 0o octal, range-checked per key.
 *   - An empty value (`key:` or `key: null`) leaves the key's default.
 *
 * Environment overrides (REGISTRY_<PATH>=<yaml>), as distribution's configuration/parser.go:
 *   - Variables are applied in byte order of their names, so REGISTRY_STORAGE comes before
 *     REGISTRY_STORAGE_OSS_BUCKET. The path is split on '_'; each part names a key in upper
 *     case (for the few keys whose Go field name differs, e.g. notifications.events =
 *     EVENTCONFIG, health.file = FILECHECKERS, both spellings are accepted). Keys containing
 *     '_' cannot be reached.
 *   - The value is parsed as a YAML document and replaces what the file had at that path
 *     (a whole section when the path names a section). A value that is not valid YAML is taken
 *     as a literal string.
 *   - Inside free-form maps (storage and auth parameters, headers, log fields, middleware
 *     options) a missing key is created in lower case; an existing key is matched without
 *     regard to case and replaced in place.
 *   - A numeric part indexes a list: REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL; the index one past
 *     the end appends an element.
 *   - REGISTRY_STORAGE=<driver> selects that driver: the driver section from the file is
 *     dropped and REGISTRY_STORAGE_<DRIVER>_* supply its parameters. Unlike distribution, the
 *     storage parameter sections (delete, redirect, cache, maintenance, tag) are kept.
 *     REGISTRY_AUTH=<type> likewise replaces the auth section with that type.
 *   - REGISTRY_VERSION is ignored (the version comes from the file); names that match no key
 *     are ignored with a warning.
 *
 * Ownership: struct config owns every string and array in it; config_free releases them.
 * Every char * in a loaded config is non-NULL ("" when unset); arrays are NULL when empty.
 * Nothing here is thread-safe, and nothing keeps state between calls.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

struct config_kv {
    char *key;
    char *value;
};

/* One header: name and its values, in file order. */
struct config_header {
    char *name;
    char **values;
    size_t nvalues;
};

enum config_storage_driver {
    CONFIG_STORAGE_FILESYSTEM,
    CONFIG_STORAGE_INMEMORY,
    CONFIG_STORAGE_OSS,
    CONFIG_STORAGE_S3,
    CONFIG_STORAGE_OTHER
};
enum config_cache { CONFIG_CACHE_NONE, CONFIG_CACHE_INMEMORY, CONFIG_CACHE_REDIS };
enum config_auth { CONFIG_AUTH_NONE, CONFIG_AUTH_SILLY, CONFIG_AUTH_TOKEN, CONFIG_AUTH_HTPASSWD };
enum config_platforms { CONFIG_PLATFORMS_ALL, CONFIG_PLATFORMS_NONE, CONFIG_PLATFORMS_LIST };

struct config_log_hook {
    bool disabled;
    char *type;
    char **levels;
    size_t nlevels;
    struct {
        char *addr, *username, *password;
        bool insecure;
    } smtp;
    char *from;
    char **to;
    size_t nto;
};

struct config_middleware {
    char *name;
    bool disabled;
    struct config_kv *options; /* nested options flattened to "a.b" / "list.0" keys */
    size_t noptions;
};

struct config_endpoint {
    char *name;
    bool disabled;
    char *url;
    struct config_header *headers;
    size_t nheaders;
    int64_t timeout_ms; /* 0 in the file means 1s, as distribution */
    int threshold;      /* 0 means 10 */
    int64_t backoff_ms; /* 0 means 1s */
    char **ignoredmediatypes;
    size_t nignoredmediatypes;
    struct {
        char **mediatypes;
        size_t nmediatypes;
        char **actions;
        size_t nactions;
    } ignore;
};

struct config_file_check {
    char *file;
    int64_t interval_ms;
    int threshold;
};

/* A count, or a percentage of a total known elsewhere ("20" or "10%"). */
struct config_amount {
    int64_t value;
    bool percent; /* value is 0..100 percent */
};

/* proxy.remotes: one more upstream, chosen by containerd's ?ns=<host> (a regmirror key). */
struct config_proxy_remote {
    char *host; /* the registry host clients name, e.g. "ghcr.io" */
    char *remoteurl, *username, *password;
};

struct config_http_check {
    char *uri;
    struct config_header *headers;
    size_t nheaders;
    int statuscode;
    int64_t timeout_ms, interval_ms;
    int threshold;
};

struct config_tcp_check {
    char *addr;
    int64_t timeout_ms, interval_ms;
    int threshold;
};

struct config_platform {
    char *architecture;
    char *os;
};

struct config {
    char *version; /* always "0.1" */

    struct {
        enum log_level level; /* log.level, else the deprecated top-level loglevel, else info */
        enum log_format formatter;
        bool formatter_logstash; /* "logstash" was asked for; formatter is then JSON */
        struct config_kv *fields;
        size_t nfields;
        bool accesslog_disabled;
        bool reportcaller;
        struct config_log_hook *hooks;
        size_t nhooks;
    } log;

    struct {
        enum config_storage_driver driver;
        char *driver_name;        /* the section's name: "filesystem", "oss", "azure", ... */
        struct config_kv *params; /* CONFIG_STORAGE_OTHER: the driver's parameters, flattened */
        size_t nparams;
        struct {
            char *rootdirectory; /* default /var/lib/registry */
            int maxthreads;      /* default 100, at least 25 */
        } filesystem;
        struct {
            char *accesskeyid, *accesskeysecret, *region, *endpoint;
            bool internal;
            char *bucket;
            bool encrypt;
            char *encryptionkeyid;
            bool secure;       /* default true */
            int64_t chunksize; /* default 10 MiB, at least 5 MiB */
            char *rootdirectory;
        } oss;
        struct {
            char *accesskey, *secretkey, *sessiontoken, *region, *regionendpoint;
            bool forcepathstyle, accelerate;
            char *bucket;
            bool encrypt;
            char *keyid;
            bool secure, skipverify, v4auth;     /* secure and v4auth default true */
            int64_t chunksize;                   /* default 10 MiB, 5 MiB .. 5 GiB */
            int64_t multipartcopychunksize;      /* default 32 MiB */
            int64_t multipartcopymaxconcurrency; /* default 100 */
            int64_t multipartcopythresholdsize;  /* default 32 MiB */
            char *rootdirectory, *storageclass, *objectacl, *useragent, *loglevel;
            char *redirectendpoint;
            bool usedualstack, usefipsendpoint;
        } s3;
        bool delete_enabled;   /* default false */
        bool redirect_disable; /* default false: redirects on */
        struct {
            enum config_cache blobdescriptor;
            int blobdescriptorsize; /* inmemory entries, default 10000 */
        } cache;
        struct {
            struct {
                bool enabled;                /* default true */
                int64_t age_ms, interval_ms; /* default 168h, 24h */
                bool dryrun;
            } uploadpurging;
            bool readonly;
        } maintenance;
        int tag_concurrencylimit; /* 0: the default */
    } storage;

    struct {
        enum config_auth type;
        struct {
            char *realm, *service;
        } silly;
        struct {
            char *realm, *service, *issuer, *rootcertbundle, *jwks;
            bool autoredirect;
            char *autoredirectpath; /* default /auth/token */
            char **signingalgorithms;
            size_t nsigningalgorithms;
        } token;
        struct {
            char *realm, *path;
        } htpasswd;
    } auth;

    struct {
        struct config_middleware *registry, *repository, *storage;
        size_t nregistry, nrepository, nstorage;
    } middleware;

    struct {
        struct {
            char *apikey, *releasestage, *endpoint;
        } bugsnag;
        struct {
            char *licensekey, *name;
            bool verbose;
        } newrelic;
    } reporting;

    struct {
        char *addr; /* default ":5000"; a socket path when net is "unix" */
        char *net;  /* "tcp" (default) or "unix" */
        char *host; /* external URL, "" when unset */
        char *prefix;
        char *secret;
        bool relativeurls;
        int64_t draintimeout_ms; /* SIGTERM, SIGINT: how long requests in flight may run */
        struct config_header *headers;
        size_t nheaders;
        struct {
            char *certificate, *key;
            char **clientcas;
            size_t nclientcas;
            char *clientauth; /* "" or one of distribution's client-auth modes */
            char *minimumtls; /* tls1.0 .. tls1.3, default tls1.2 */
            char **ciphersuites;
            size_t nciphersuites;
            struct {
                char *cachefile, *email;
                char **hosts;
                size_t nhosts;
                char *directoryurl;
            } letsencrypt;
        } tls;
        struct {
            char *addr;
            bool prometheus_enabled;
            char *prometheus_path; /* default /metrics */
        } debug;
        bool http2_disabled;
        bool h2c_enabled;
    } http;

    struct {
        bool events_includereferences;
        struct config_endpoint *endpoints;
        size_t nendpoints;
    } notifications;

    struct {
        char *addr; /* redis.addr, else the first of redis.addrs (without a sentinel) */
        char **addrs;
        size_t naddrs;
        char *username, *password;
        int db;
        int64_t dialtimeout_ms, readtimeout_ms, writetimeout_ms;
        struct {
            int maxidle, maxactive;
            int64_t idletimeout_ms;
        } pool;
        struct {
            bool enabled;
            char *certificate, *key;
            char **rootcas;
            size_t nrootcas;
        } tls;
        /* redis.sentinel.*, or distribution 3's redis.mastername with redis.addrs as the
         * sentinels (and redis.sentinelusername/sentinelpassword): set, the master is asked
         * of these sentinels and redis.addr stays empty. */
        struct {
            char *mastername;
            char **addrs;
            size_t naddrs;
            char *username, *password;
        } sentinel;
    } redis;

    struct {
        struct {
            bool enabled;
            int64_t interval_ms; /* default 10s */
            int threshold;
        } storagedriver;
        struct config_file_check *file;
        size_t nfile;
        struct config_http_check *http;
        size_t nhttp;
        struct config_tcp_check *tcp;
        size_t ntcp;
    } health;

    struct {
        int maxentries; /* default 1000 */
    } catalog;
    struct {
        int maxtags; /* default 1000 */
    } tags;

    struct {
        char *remoteurl, *username, *password;
        int64_t ttl_ms; /* default 168h; 0: cached content never expires */
        struct {
            char *command;
            int64_t lifetime_ms;
        } exec;
        int64_t cachewritetimeout_ms; /* default 5m */
        /* regmirror keys: a proxied tag younger than this is served without asking the
         * upstream (0: re-check every pull with a HEAD); more upstreams by ?ns= host. */
        int64_t tagfreshness_ms;
        /* regmirror key: bound on the proxied content's bytes (0: none); beyond it the least
         * recently pulled images are evicted. */
        int64_t maxsize;
        /* regmirror key: a local directory for the blob spool when the store is remote (its
         * content belongs to the running daemon and is removed at start). */
        char *spooldir;
        /* regmirror keys, mirror/writepolicy.h: writes accepted at all (default: read-only
         * cache), by whom (empty: any user auth lets in), and over tags pulled through. */
        bool push;
        char **pushusers;
        size_t npushusers;
        bool shadow;
        /* regmirror keys: upstream exchanges running at once (default 64); beyond it a
         * request waits in a queue at most fetchqueuetimeout (default 60s), then gets 503. */
        int maxfetches;
        int64_t fetchqueuetimeout_ms;
        /* regmirror key: while an upstream's announced pull budget (ratelimit-remaining) is
         * at or under this, cached tags are served without the upstream check (default 0:
         * only once the budget is used up). */
        struct config_amount ratelimitreserve;
        struct config_proxy_remote *remotes;
        size_t nremotes;
    } proxy;

    /* regmirror keys: several nodes on one store and one Redis act as one mirror. */
    struct {
        /* The URL other nodes reach this one at (its fetches in flight are read through it);
         * empty: no cross-node fetch sharing. Needs redis.addr (or redis.sentinel) and
         * http.secret. */
        char *advertise;
    } cluster;

    struct {
        struct {
            bool enabled;
            char *signingkeyfile;
        } schema1;
    } compatibility;

    struct {
        bool enabled; /* effective: validation.enabled, or not validation.disabled */
        struct {
            char **allow;
            size_t nallow;
            char **deny;
            size_t ndeny;
        } urls;
        struct {
            enum config_platforms platforms;
            struct config_platform *platformlist;
            size_t nplatformlist;
        } indexes;
    } validation;

    struct {
        char **classes;
        size_t nclasses;
    } policy_repository;
};

/* Messages without a "warning: " / "error: " prefix; the caller adds one when printing. */
struct config_diag {
    char **errors;
    size_t nerrors;
    char **warnings;
    size_t nwarnings;
};

/*
 * Parses yaml text (name is used in messages), applies envp overrides (NULL-terminated "K=V"
 * array; NULL = none), validates. Returns 0 when there are no errors (warnings allowed), -1
 * otherwise; out is filled only on success (zeroed on failure) and must be config_free'd;
 * diag is always filled and must be config_diag_free'd.
 */
int config_load_string(const char *yaml, size_t len, const char *name, char *const *envp,
                       struct config *out, struct config_diag *diag);
/* The same for a file (at most 1 MiB); an unreadable file is an error in diag. */
int config_load_file(const char *path, char *const *envp, struct config *out,
                     struct config_diag *diag);
/* The embedded default configuration, the same text as conf/config.yml. */
const char *config_default_yaml(void);
/*
 * Prints the effective configuration as YAML that loads back to the same values, with secrets
 * (passwords, secret keys, API keys, Authorization header values) shown as "*****".
 */
void config_print(const struct config *cfg, FILE *f);
/* Frees what cfg owns and zeroes it; safe on a zeroed struct. */
void config_free(struct config *cfg);
void config_diag_free(struct config_diag *diag);

#endif
