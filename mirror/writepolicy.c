#include "writepolicy.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

static bool proxy_mode(const struct config *cfg)
{
    return cfg->proxy.remoteurl[0] != '\0';
}

/* The proxy.remotes host whose cache namespace name is in (see the proxy's pick_target). */
static const char *reserved_host(const struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->proxy.nremotes; i++) {
        const char *host = cfg->proxy.remotes[i].host;
        size_t hl = host ? strlen(host) : 0;
        if (hl == 0 || strlen(name) <= hl || name[hl] != '/')
            continue;
        size_t j = 0;
        while (j < hl && (tolower((unsigned char)host[j]) == (unsigned char)name[j] ||
                          (host[j] == ':' && name[j] == '-')))
            j++;
        if (j == hl)
            return host;
    }
    return NULL;
}

static bool may_push(const struct config *cfg, const char *user)
{
    if (cfg->proxy.npushusers == 0)
        return true;
    for (size_t i = 0; user && i < cfg->proxy.npushusers; i++) {
        if (strcmp(cfg->proxy.pushusers[i], user) == 0)
            return true;
    }
    return false;
}

enum regerr writepolicy_request(const struct config *cfg, const struct api_route *rt,
                                const char *user, char *why, size_t whylen)
{
    if (!proxy_mode(cfg))
        return REG_OK;
    if (!cfg->proxy.push) {
        snprintf(why, whylen, "this mirror is a read-only cache (proxy.push is off)");
        return REG_ERR_UNSUPPORTED;
    }
    const char *host = reserved_host(cfg, rt->name);
    if (host) {
        snprintf(why, whylen, "%s holds the cache of the upstream %s (proxy.remotes)", rt->name,
                 host);
        return REG_ERR_DENIED;
    }
    if (!may_push(cfg, user)) {
        snprintf(why, whylen, "user %s may not push (proxy.pushusers)", user ? user : "-");
        return REG_ERR_DENIED;
    }
    return REG_OK;
}

enum regerr writepolicy_tag(const struct config *cfg, struct registry *reg, const char *name,
                            const char *ref, char *why, size_t whylen)
{
    time_t checked;
    if (!proxy_mode(cfg) || cfg->proxy.shadow || strchr(ref, ':'))
        return REG_OK;
    if (!registry_proxy_tag_checked(reg, name, ref, &checked))
        return REG_OK;
    snprintf(why, whylen, "%s:%s is the upstream's tag, pulled through (proxy.shadow is off)", name,
             ref);
    return REG_ERR_DENIED;
}

void writepolicy_log_start(const struct config *cfg, bool client_auth)
{
    if (!proxy_mode(cfg))
        return;
    if (!cfg->proxy.push)
        log_info("proxy: read-only cache, pushes answer 405; set proxy.push: true to accept "
                 "them");
    else if (!client_auth)
        log_warn("proxy: proxy.push is on without client auth: anyone who can reach this "
                 "mirror can push%s",
                 cfg->proxy.shadow ? ", and replace the upstream's tags (proxy.shadow)" : "");
    else
        log_info("proxy: pushes accepted from %s%s",
                 cfg->proxy.npushusers ? "the users in proxy.pushusers" : "any authenticated user",
                 cfg->proxy.shadow ? "; they may replace the upstream's tags (proxy.shadow)" : "");
}
