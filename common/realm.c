#include "realm.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <libpsl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Longest DNS name plus brackets and NUL; longer hosts do not parse. */
#define HOST_MAX 260

struct url_parts {
    bool https;
    bool ip; /* an IPv4 or IPv6 literal: addr holds it */
    unsigned char addr[16];
    int family;
    char host[HOST_MAX]; /* lowercase, no trailing dot */
};

static pthread_once_t psl_once = PTHREAD_ONCE_INIT;
static psl_ctx_t *psl_loaded;

/* The public-suffix list loads once for the process (libpsl's own copy is read-only). */
static void psl_load(void)
{
    psl_loaded = psl_latest(NULL);
}

static const psl_ctx_t *psl_ctx(void)
{
    pthread_once(&psl_once, psl_load);
    return psl_loaded ? psl_loaded : psl_builtin();
}

static int parse(const char *url, struct url_parts *out)
{
    CURLU *h = curl_url();
    char *scheme = NULL, *host = NULL, *user = NULL, *password = NULL;
    int result = -1;

    memset(out, 0, sizeof(*out));
    if (!h || !url || curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        goto out;
    /* userinfo in a realm would be credentials chosen by the upstream: not ours to send. */
    if (curl_url_get(h, CURLUPART_USER, &user, 0) == CURLUE_OK ||
        curl_url_get(h, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK)
        goto out;
    out->https = strcasecmp(scheme, "https") == 0;
    if (!out->https && strcasecmp(scheme, "http") != 0)
        goto out;
    size_t n = strlen(host);
    if (n > 1 && host[n - 1] == '.')
        n--;
    if (n == 0 || n >= sizeof(out->host))
        goto out;
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        out->host[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    out->host[n] = '\0';
    if (out->host[0] == '[') {
        char v6[HOST_MAX];
        char *zone;
        if (n < 3 || out->host[n - 1] != ']')
            goto out;
        snprintf(v6, sizeof(v6), "%.*s", (int)(n - 2), out->host + 1);
        zone = strchr(v6, '%');
        if (zone)
            *zone = '\0';
        if (inet_pton(AF_INET6, v6, out->addr) != 1)
            goto out;
        out->ip = true;
        out->family = AF_INET6;
    } else if (inet_pton(AF_INET, out->host, out->addr) == 1) {
        out->ip = true;
        out->family = AF_INET;
    }
    result = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(password);
    curl_url_cleanup(h);
    return result;
}

static bool same_host(const struct url_parts *a, const struct url_parts *b)
{
    if (a->ip || b->ip)
        return a->ip && b->ip && a->family == b->family &&
               memcmp(a->addr, b->addr, a->family == AF_INET ? 4 : 16) == 0;
    return strcmp(a->host, b->host) == 0;
}

/* eTLD+1 of a DNS name (a pointer into host), or NULL: IP literals, non-ASCII names,
 * "localhost", single labels and public suffixes have none. */
static const char *registrable(const struct url_parts *u)
{
    if (u->ip)
        return NULL;
    for (const char *p = u->host; *p; p++) {
        if ((unsigned char)*p >= 0x80)
            return NULL;
    }
    return psl_registrable_domain(psl_ctx(), u->host);
}

bool realm_may_get_credentials(const char *upstream_url, const char *realm_url)
{
    struct url_parts up, realm;

    if (parse(upstream_url, &up) != 0 || parse(realm_url, &realm) != 0)
        return false;
    if (up.https && !realm.https)
        return false;
    if (same_host(&up, &realm))
        return true;
    const char *a = registrable(&up), *b = registrable(&realm);
    return a && b && strcmp(a, b) == 0;
}

int realm_describe(const char *upstream_url, char *buf, size_t cap)
{
    struct url_parts up;
    int n;

    if (cap > 0)
        buf[0] = '\0';
    if (cap == 0 || parse(upstream_url, &up) != 0)
        return -1;
    const char *scheme = up.https ? "https" : "http or https";
    const char *domain = registrable(&up);
    if (domain)
        n = snprintf(buf, cap, "the realm named by the upstream's challenge, if on %s (%s)", domain,
                     scheme);
    else
        n = snprintf(buf, cap,
                     "the realm named by the upstream's challenge, if on the %s %s itself (%s)",
                     up.ip ? "address" : "host", up.host, scheme);
    if (n < 0 || (size_t)n >= cap) {
        buf[0] = '\0';
        return -1;
    }
    return 0;
}
