#ifndef REGMIRROR_WWWAUTH_H
#define REGMIRROR_WWWAUTH_H
/*
 * wwwauth: parses WWW-Authenticate header values (RFC 7235 section 4.1) as registries send
 * them, keeping the Bearer and Basic challenges and the parameters the token flow needs.
 *
 *   WWW-Authenticate = 1#challenge
 *   challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
 *   auth-param       = token BWS "=" BWS ( token / quoted-string )
 *
 * One header value may carry several challenges, and a response may carry several headers:
 * call wwwauth_parse once per value on the same struct. Scheme and parameter names compare
 * case-insensitively; quoted strings are unescaped. Other schemes and other parameters are
 * checked for syntax and skipped.
 *
 * Everything lives in the fixed-size struct: no allocation, no cleanup.
 */
#include <stddef.h>

/* Longest header value looked at; longer values are refused whole. */
#define WWWAUTH_INPUT_MAX 16384
/* Known-scheme challenges kept; later ones are skipped. */
#define WWWAUTH_MAX_CHALLENGES 4
/* Buffer sizes (with the NUL) of each kept parameter. */
#define WWWAUTH_REALM_MAX 1024
#define WWWAUTH_SERVICE_MAX 256
#define WWWAUTH_SCOPE_MAX 2048
#define WWWAUTH_ERROR_MAX 64

enum wwwauth_scheme { WWWAUTH_BASIC = 1, WWWAUTH_BEARER };

struct wwwauth_challenge {
    enum wwwauth_scheme scheme;
    char realm[WWWAUTH_REALM_MAX];     /* "" when absent; Bearer: the token endpoint URL */
    char service[WWWAUTH_SERVICE_MAX]; /* Bearer only, "" when absent */
    /* Bearer only: several scope parameters are joined with one space, as scopes are. */
    char scope[WWWAUTH_SCOPE_MAX];
    char error[WWWAUTH_ERROR_MAX]; /* Bearer only, e.g. "invalid_token", "insufficient_scope" */
};

struct wwwauth {
    struct wwwauth_challenge ch[WWWAUTH_MAX_CHALLENGES];
    size_t n;
};

/* Empties out. */
void wwwauth_init(struct wwwauth *out);

/*
 * Parses the len bytes at value (no NUL needed) and appends its Bearer and Basic challenges
 * to out. Returns 0, or -1 when the value is malformed (bad syntax, a control or NUL byte,
 * an unterminated quoted string) or a kept parameter or the whole value is over its cap.
 * On -1 the challenges completed before the error stay in out and nothing half-parsed is
 * added. A repeated realm/service/error keeps its first value.
 */
int wwwauth_parse(struct wwwauth *out, const char *value, size_t len);

/* The first challenge of the scheme, or NULL. */
const struct wwwauth_challenge *wwwauth_find(const struct wwwauth *w, enum wwwauth_scheme scheme);

#endif
