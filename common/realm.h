#ifndef REGMIRROR_REALM_H
#define REGMIRROR_REALM_H
/*
 * realm: which token realms may receive an upstream's account. The realm is named by the
 * upstream's WWW-Authenticate challenge, so it is outside input: a registry (or whoever sits
 * on a plain-http path to it) could name any host and collect the configured password.
 *
 * The rule (distribution 3's since 2026, plus the scheme):
 *  - the realm is http(s), has no userinfo, and is https unless the upstream itself is http;
 *  - its host is the upstream's host (any port), or both hosts have the same registrable
 *    domain (eTLD+1 by the public-suffix list: auth.docker.io for registry-1.docker.io);
 *  - an upstream named by an IP address, by "localhost", by a single label or by a public
 *    suffix has no registrable domain: only that same host qualifies (an IP address compares
 *    as an address, so 127.0.0.1 and 127.0.0.2 differ).
 * The list is Debian's publicsuffix package, read through libpsl (the newest of its built-in
 * copy and /usr/share/publicsuffix).
 */
#include <stdbool.h>
#include <stddef.h>

/* Whether realm_url may be sent the account configured for upstream_url. False for
 * anything that does not parse. */
bool realm_may_get_credentials(const char *upstream_url, const char *realm_url);

/*
 * The rule for upstream_url in words, for the start log and check-config ("token realms on
 * docker.io (https)"), into buf (always NUL-terminated when cap > 0). Returns 0, or -1 when
 * upstream_url does not parse or buf is too small.
 */
int realm_describe(const char *upstream_url, char *buf, size_t cap);

#endif
