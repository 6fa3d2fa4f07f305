#ifndef REGMIRROR_AUTH_H
#define REGMIRROR_AUTH_H
/*
 * auth: client authentication with an htpasswd file (auth.htpasswd.{realm,path}), as
 * registry:2 does it: every /v2/ request carries "Authorization: Basic base64(user:password)",
 * checked against the file's bcrypt entries; anything else gets 401 with
 * "WWW-Authenticate: Basic realm=...".
 *
 * The file: one "user:hash" per line; blank lines and lines starting with '#' are skipped,
 * surrounding blanks and a CR are trimmed; a user listed twice keeps the last entry. Hashes
 * accepted: bcrypt ($2y$, $2b$, $2a$ from `htpasswd -B`) and the SHA-crypt forms libcrypt
 * knows ($5$, $6$). Anything else (apr1 MD5, {SHA}, crypt DES, plain text) is refused when the
 * file is read, naming the line and the user, never the hash.
 *
 * Checking: bcrypt at cost 10 takes tens of milliseconds on the event loop, so a verified
 * user/password pair is remembered (as a salted SHA-256, never the password) and later requests
 * with the same pair cost a hash lookup. Comparisons are constant-time; an unknown user costs
 * the same bcrypt as a known one. Failed logins are logged with user and peer, never the
 * password. The file is re-read when it changes (checked at most once a second); a changed
 * file that does not parse keeps the entries already loaded, with an error logged.
 *
 * Not thread-safe: the event-loop thread only.
 */
#include <stdbool.h>
#include <stddef.h>

#define AUTH_USER_MAX 256
#define AUTH_PASS_MAX 512
/* The longest Authorization header value looked at; longer is treated as wrong credentials. */
#define AUTH_HEADER_MAX 1024

struct auth;

/* One parsed htpasswd entry; both strings are owned by the entry list. */
struct auth_entry {
    char *user;
    char *hash;
};

struct auth_entries {
    struct auth_entry *v; /* sorted by user, unique */
    size_t n;
};

/*
 * Parses htpasswd text. Returns 0 and fills out (release with auth_entries_free), or -1 with
 * a message in err ("line 3: ...") and out empty. The message never holds a hash.
 */
int auth_htpasswd_parse(const char *text, size_t len, struct auth_entries *out, char *err,
                        size_t errlen);
void auth_entries_free(struct auth_entries *e);

/*
 * Parses an Authorization header value "Basic <base64(user:password)>" (scheme in any case).
 * Returns 0 with user and password NUL-terminated in the buffers, -1 when the header is no
 * well-formed Basic credential or a part does not fit. pass may hold ':'; user may not.
 */
int auth_basic_parse(const char *header, char *user, size_t ulen, char *pass, size_t plen);

/*
 * Loads the htpasswd file at path for realm. NULL when it cannot be read or parsed, with the
 * reason (naming path) in err.
 */
struct auth *auth_new(const char *realm, const char *path, char *err, size_t errlen);
void auth_free(struct auth *a);

/*
 * Whether the Authorization header value (NULL when absent) names a user of the file with
 * the right password. remote is the peer for the failed-login log line. When user is not
 * NULL, the user name (on success) is copied there (AUTH_USER_MAX bytes).
 */
bool auth_check(struct auth *a, const char *authorization, const char *remote, char *user);

/* The WWW-Authenticate value for 401 answers: Basic realm="<realm>" (quoted as needed). */
const char *auth_challenge(const struct auth *a);

#endif
