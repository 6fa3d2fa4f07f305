#ifndef REGMIRROR_WRITEPOLICY_H
#define REGMIRROR_WRITEPOLICY_H
/*
 * writepolicy: who may write to a pull-through cache (proxy.remoteurl set). registry:2 in
 * proxy mode is a read-only cache; so is regmirror unless the config opens it:
 *
 *  - proxy.push false (the default): every write (upload start, cross-repository mount,
 *    chunk, commit or cancel, manifest PUT or DELETE, blob DELETE) answers 405 UNSUPPORTED,
 *    as registry:2 2.8 does.
 *  - proxy.push true: writes are accepted. With client auth (auth.htpasswd) every request is
 *    authenticated already, and proxy.pushusers, when set, names the only users who may
 *    write (anyone else: 403 DENIED). Without client auth anyone who reaches the mirror may
 *    write (the start log warns).
 *  - The names a proxy.remotes host's content is cached under ("<host>/...", ':' as '-')
 *    belong to that upstream: no write there, whatever proxy.push says (403 DENIED).
 *  - proxy.shadow false (the default): a manifest PUT or DELETE by tag naming a tag the
 *    mirror pulled from the upstream (it carries the proxy marker, registry_proxy_tag_*) is
 *    refused with 403 DENIED, so the tag stays the upstream's. proxy.shadow true: a push
 *    makes the tag local (never re-checked again), a delete removes it. Deletes by digest
 *    and blob deletes only drop cached content that the next pull fetches again: they need
 *    no shadow. A tag the mirror has never pulled is the pusher's once pushed.
 *
 * Local tags already in a store are served as before. Without proxy.remoteurl every write is
 * allowed here (the other checks, e.g. storage.delete, still apply).
 */
#include <stdbool.h>
#include <stddef.h>

#include "api.h"
#include "config.h"
#include "regerr.h"

/*
 * Whether the write request for rt may go on, decided from the config alone (on the loop,
 * before the route's handler). user is the authenticated user, NULL without client auth.
 * REG_OK, or REG_ERR_UNSUPPORTED / REG_ERR_DENIED with the reason in why.
 */
enum regerr writepolicy_request(const struct config *cfg, const struct api_route *rt,
                                const char *user, char *why, size_t whylen);
/*
 * Whether a manifest PUT or DELETE by ref in name may change that tag: DENIED (reason in why)
 * when ref is a proxied tag and proxy.shadow is off. Reads the store: call it from offload
 * work, right before the write.
 */
enum regerr writepolicy_tag(const struct config *cfg, struct registry *reg, const char *name,
                            const char *ref, char *why, size_t whylen);
/* The start log line saying how writes are configured; nothing without proxy.remoteurl. */
void writepolicy_log_start(const struct config *cfg, bool client_auth);

#endif
