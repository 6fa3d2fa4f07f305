#include "auth.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "buf.h"
#include "log.h"

/* A file larger than this is refused: htpasswd files are a few KB. */
#define AUTH_FILE_MAX (4 * 1024 * 1024)
#define AUTH_LINE_MAX 4096
#define AUTH_HASH_MAX 256
/* Verified user/password pairs remembered; one slot per first byte of the key. */
#define AUTH_CACHE_SLOTS 256

struct cache_slot {
    bool used;
    unsigned char key[32];
};

struct auth {
    char *realm, *path, *challenge;
    struct auth_entries e;
    struct stat st;      /* of the file as last read (or last failed to read) */
    time_t checked_at;   /* last stat() for changes */
    bool missing_logged; /* the file vanished: said once */
    struct crypt_data *cd;
    unsigned char secret[32]; /* salts the cache keys, so a memory dump shows no usable hash */
    struct cache_slot cache[AUTH_CACHE_SLOTS];
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- the file ---- */

/* NULL when hash is a kind we verify, else what it is (for the error message). */
static const char *unsupported_hash(const char *hash)
{
    size_t len = strlen(hash);
    if (!strncmp(hash, "$2y$", 4) || !strncmp(hash, "$2b$", 4) || !strncmp(hash, "$2a$", 4)) {
        /* $2y$NN$ + 22 salt + 31 hash characters */
        if (len != 60 || crypt_checksalt(hash) != CRYPT_SALT_OK)
            return "a malformed bcrypt hash";
        return NULL;
    }
    if (!strncmp(hash, "$5$", 3) || !strncmp(hash, "$6$", 3)) {
        if (crypt_checksalt(hash) != CRYPT_SALT_OK)
            return "a malformed SHA-crypt hash";
        return NULL;
    }
    if (!strncmp(hash, "$apr1$", 6))
        return "an apr1 MD5 hash (htpasswd -m)";
    if (!strncmp(hash, "{SHA}", 5))
        return "an unsalted SHA-1 hash (htpasswd -s)";
    if (!strncmp(hash, "$1$", 3))
        return "an MD5-crypt hash";
    if (hash[0] == '$')
        return "a hash of an unknown kind";
    if (hash[0] == '\0')
        return "an empty hash";
    return "a crypt(3) DES hash or a plain-text password (htpasswd -d / -p)";
}

struct ranked {
    struct auth_entry e;
    size_t pos;
};

static int ranked_cmp(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    int c = strcmp(x->e.user, y->e.user);
    if (c)
        return c;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int entry_user_cmp(const void *a, const void *b)
{
    return strcmp(((const struct auth_entry *)a)->user, ((const struct auth_entry *)b)->user);
}

static void entry_clear(struct auth_entry *en)
{
    free(en->user);
    explicit_bzero(en->hash, strlen(en->hash));
    free(en->hash);
    en->user = en->hash = NULL;
}

/* Sorts e by user and drops all but the last (in file order) entry of each user. */
static int dedupe_sorted(struct auth_entries *e)
{
    if (e->n < 2)
        return 0;
    struct ranked *r = calloc(e->n, sizeof(*r));
    if (!r)
        return -1;
    for (size_t i = 0; i < e->n; i++) {
        r[i].e = e->v[i];
        r[i].pos = i;
    }
    qsort(r, e->n, sizeof(*r), ranked_cmp);
    size_t n = 0;
    for (size_t i = 0; i < e->n; i++) {
        if (i + 1 < e->n && strcmp(r[i].e.user, r[i + 1].e.user) == 0)
            entry_clear(&r[i].e);
        else
            e->v[n++] = r[i].e;
    }
    e->n = n;
    free(r);
    return 0;
}

void auth_entries_free(struct auth_entries *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n; i++) {
        free(e->v[i].user);
        if (e->v[i].hash) {
            explicit_bzero(e->v[i].hash, strlen(e->v[i].hash));
            free(e->v[i].hash);
        }
    }
    free(e->v);
    e->v = NULL;
    e->n = 0;
}

/* A user name fit for a log line: control bytes shown as '?', cut to size - 1 bytes. */
static void printable(const char *user, char *out, size_t size)
{
    size_t k = 0;
    for (; k + 1 < size && user[k]; k++)
        out[k] = (unsigned char)user[k] < 0x20 || user[k] == 0x7f ? '?' : user[k];
    out[k] = '\0';
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

int auth_htpasswd_parse(const char *text, size_t len, struct auth_entries *out, char *err,
                        size_t errlen)
{
    int result = -1;
    struct auth_entries e = {0};
    size_t cap = 0, lineno = 0;
    const char *p = text, *end = text + len;
    out->v = NULL;
    out->n = 0;
    while (p < end) {
        lineno++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        if (le - p > AUTH_LINE_MAX) {
            set_err(err, errlen, "line %zu: longer than %d bytes", lineno, AUTH_LINE_MAX);
            goto out;
        }
        while (p < le && is_blank(*p))
            p++;
        while (le > p && is_blank(le[-1]))
            le--;
        if (p == le || *p == '#') {
            p = next;
            continue;
        }
        if (memchr(p, '\0', (size_t)(le - p))) {
            set_err(err, errlen, "line %zu: contains a NUL byte", lineno);
            goto out;
        }
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (!colon) {
            set_err(err, errlen, "line %zu: expected user:hash", lineno);
            goto out;
        }
        size_t ul = (size_t)(colon - p), hl = (size_t)(le - colon - 1);
        if (ul == 0 || ul >= AUTH_USER_MAX) {
            set_err(err, errlen, "line %zu: the user name is empty or longer than %d bytes", lineno,
                    AUTH_USER_MAX - 1);
            goto out;
        }
        if (hl >= AUTH_HASH_MAX) {
            set_err(err, errlen, "line %zu: the hash is longer than %d bytes", lineno,
                    AUTH_HASH_MAX - 1);
            goto out;
        }
        char *user = strndup(p, ul), *hash = strndup(colon + 1, hl);
        if (!user || !hash) {
            free(user);
            free(hash);
            set_err(err, errlen, "out of memory");
            goto out;
        }
        const char *why = unsupported_hash(hash);
        if (why) {
            /* The user name goes into the message, never the hash. */
            char shown[65];
            printable(user, shown, sizeof(shown));
            set_err(err, errlen,
                    "line %zu (user %s): %s is not supported; create entries with "
                    "htpasswd -B (bcrypt)",
                    lineno, shown, why);
            free(user);
            explicit_bzero(hash, hl);
            free(hash);
            goto out;
        }
        /* bounded by the text: every entry takes a line of it */
        if (buf_grow_items(&e.v, &cap, e.n + 1, sizeof(*e.v), BUF_UNCAPPED / sizeof(*e.v)) !=
            BUF_OK) {
            free(user);
            free(hash);
            set_err(err, errlen, "out of memory");
            goto out;
        }
        e.v[e.n].user = user;
        e.v[e.n].hash = hash;
        e.n++;
        p = next;
    }
    if (dedupe_sorted(&e) < 0) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    result = 0;
out:
    if (result == 0)
        *out = e;
    else
        auth_entries_free(&e);
    return result;
}

/* ---- the Authorization header ---- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/*
 * Strict standard base64 with padding (what Go's StdEncoding, and so registry:2, accepts).
 * Returns the decoded length, or -1 when s is malformed or the result needs more than cap.
 */
static long b64_decode(const char *s, size_t len, unsigned char *out, size_t cap)
{
    if (len == 0 || len % 4 != 0)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + k];
            if (c == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad)
                return -1; /* data after '=' */
            v[k] = b64_value(c);
            if (v[k] < 0)
                return -1;
        }
        unsigned long w = (unsigned long)v[0] << 18 | (unsigned long)v[1] << 12 |
                          (unsigned long)v[2] << 6 | (unsigned long)v[3];
        int bytes = 3 - pad;
        if (n + (size_t)bytes > cap)
            return -1;
        out[n++] = (unsigned char)(w >> 16);
        if (bytes > 1)
            out[n++] = (unsigned char)(w >> 8);
        if (bytes > 2)
            out[n++] = (unsigned char)w;
    }
    return (long)n;
}

int auth_basic_parse(const char *header, char *user, size_t ulen, char *pass, size_t plen)
{
    int result = -1;
    unsigned char buf[AUTH_USER_MAX + AUTH_PASS_MAX];
    if (!header || ulen == 0 || plen == 0 || strlen(header) > AUTH_HEADER_MAX)
        goto out;
    if (strncasecmp(header, "Basic", 5) != 0 || (header[5] != ' ' && header[5] != '\t'))
        goto out;
    const char *p = header + 5;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t len = strlen(p);
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    long n = b64_decode(p, len, buf, sizeof(buf));
    if (n < 0)
        goto out;
    const unsigned char *colon = memchr(buf, ':', (size_t)n);
    if (!colon || memchr(buf, '\0', (size_t)n))
        goto out;
    size_t ul = (size_t)(colon - buf), pl = (size_t)n - ul - 1;
    if (ul >= ulen || pl >= plen)
        goto out;
    memcpy(user, buf, ul);
    user[ul] = '\0';
    memcpy(pass, colon + 1, pl);
    pass[pl] = '\0';
    result = 0;
out:
    explicit_bzero(buf, sizeof(buf));
    return result;
}

/* ---- loading ---- */

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Reads and parses path. 0 with *out and *st filled, or -1 with err set (naming the path). */
static int load_file(const char *path, struct auth_entries *out, struct stat *st, char *err,
                     size_t errlen)
{
    int result = -1;
    char *text = NULL;
    char why[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "auth.htpasswd.path: cannot open %s: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
        set_err(err, errlen, "auth.htpasswd.path: %s is not a regular file", path);
        goto out;
    }
    if (st->st_size > AUTH_FILE_MAX) {
        set_err(err, errlen, "auth.htpasswd.path: %s is larger than %d bytes", path, AUTH_FILE_MAX);
        goto out;
    }
    size_t size = (size_t)st->st_size, got = 0;
    text = malloc(size + 1);
    if (!text) {
        set_err(err, errlen, "auth.htpasswd.path: out of memory reading %s", path);
        goto out;
    }
    while (got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_err(err, errlen, "auth.htpasswd.path: cannot read %s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    if (auth_htpasswd_parse(text, got, out, why, sizeof(why)) != 0) {
        set_err(err, errlen, "auth.htpasswd.path: %s: %s", path, why);
        goto out;
    }
    result = 0;
out:
    if (text) {
        explicit_bzero(text, (size_t)st->st_size);
        free(text);
    }
    if (fd >= 0)
        close(fd);
    return result;
}

/* Builds Basic realm="..." with '"' and '\' escaped (as Go's %q does for plain text). */
static char *make_challenge(const char *realm)
{
    size_t len = strlen(realm);
    char *c = malloc(2 * len + 16);
    if (!c)
        return NULL;
    size_t n = (size_t)sprintf(c, "Basic realm=\"");
    for (const char *p = realm; *p; p++) {
        if (*p == '"' || *p == '\\')
            c[n++] = '\\';
        /* a CR or LF would be dropped with the whole header by the HTTP layer */
        c[n++] = (*p == '\r' || *p == '\n') ? ' ' : *p;
    }
    c[n++] = '"';
    c[n] = '\0';
    return c;
}

struct auth *auth_new(const char *realm, const char *path, char *err, size_t errlen)
{
    struct auth *a = calloc(1, sizeof(*a));
    if (!a || !(a->realm = strdup(realm)) || !(a->path = strdup(path)) ||
        !(a->challenge = make_challenge(realm)) || !(a->cd = calloc(1, sizeof(*a->cd))) ||
        RAND_bytes(a->secret, sizeof(a->secret)) != 1) {
        set_err(err, errlen, "auth: out of memory");
        goto fail;
    }
    if (load_file(path, &a->e, &a->st, err, errlen) != 0)
        goto fail;
    if (a->e.n == 0)
        log_warn("auth: %s has no users: every request will be refused", path);
    a->checked_at = time(NULL);
    return a;
fail:
    auth_free(a);
    return NULL;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    auth_entries_free(&a->e);
    if (a->cd) {
        explicit_bzero(a->cd, sizeof(*a->cd));
        free(a->cd);
    }
    OPENSSL_cleanse(a->secret, sizeof(a->secret));
    free(a->realm);
    free(a->path);
    free(a->challenge);
    free(a);
}

const char *auth_challenge(const struct auth *a)
{
    return a->challenge;
}

/* Re-reads the file when it changed; at most one stat() a second. */
static void maybe_reload(struct auth *a)
{
    time_t now = time(NULL);
    if (now == a->checked_at)
        return;
    a->checked_at = now;
    struct stat st;
    if (stat(a->path, &st) < 0) {
        if (!a->missing_logged)
            log_error("auth: cannot stat %s (%s): keeping the %zu users loaded before", a->path,
                      strerror(errno), a->e.n);
        a->missing_logged = true;
        return;
    }
    a->missing_logged = false;
    if (same_file(&st, &a->st))
        return;
    struct auth_entries e;
    char err[512];
    if (load_file(a->path, &e, &st, err, sizeof(err)) != 0) {
        log_error("%s: keeping the %zu users loaded before", err, a->e.n);
        a->st = st; /* say it once per change, not once a second */
        return;
    }
    auth_entries_free(&a->e);
    a->e = e;
    a->st = st;
    memset(a->cache, 0, sizeof(a->cache));
    log_info("auth: reloaded %s: %zu users", a->path, a->e.n);
}

/* ---- checking ---- */

static void cache_key(const struct auth *a, const char *user, const char *pass,
                      unsigned char key[32])
{
    unsigned int len = 32;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, a->secret, sizeof(a->secret)) != 1 ||
        EVP_DigestUpdate(md, user, strlen(user) + 1) != 1 ||
        EVP_DigestUpdate(md, pass, strlen(pass)) != 1 || EVP_DigestFinal_ex(md, key, &len) != 1) {
        /* no key: a zeroed one never matches, since slots are marked used only when filled */
        memset(key, 0, 32);
        key[0] = 0xff;
    }
    EVP_MD_CTX_free(md);
}

static const struct auth_entry *find_user(const struct auth *a, const char *user)
{
    struct auth_entry k = {.user = (char *)user};
    if (a->e.n == 0) /* an empty file: no array to search */
        return NULL;
    return bsearch(&k, a->e.v, a->e.n, sizeof(*a->e.v), entry_user_cmp);
}

static void log_failure(const char *user, const char *remote, const char *why)
{
    char shown[65];
    printable(user, shown, sizeof(shown));
    const char *fields[] = {"user", shown, "remote", remote ? remote : "", "reason", why, NULL};
    log_kv(LOG_WARN, fields, "auth: failed login");
}

bool auth_check(struct auth *a, const char *authorization, const char *remote, char *user_out)
{
    bool ok = false;
    char user[AUTH_USER_MAX], pass[AUTH_PASS_MAX];
    unsigned char key[32];
    user[0] = pass[0] = '\0';
    maybe_reload(a);
    if (!authorization)
        goto out; /* clients ask without credentials first: no log line */
    if (auth_basic_parse(authorization, user, sizeof(user), pass, sizeof(pass)) != 0) {
        log_failure("", remote, "malformed Basic credentials");
        goto out;
    }
    cache_key(a, user, pass, key);
    struct cache_slot *slot = &a->cache[key[0]];
    if (slot->used && CRYPTO_memcmp(slot->key, key, sizeof(key)) == 0) {
        ok = true;
        goto out;
    }
    const struct auth_entry *en = find_user(a, user);
    /* An unknown user costs the same hashing as a known one (against another user's hash). */
    const char *hash = en ? en->hash : (a->e.n ? a->e.v[0].hash : NULL);
    if (hash) {
        const char *h = crypt_rn(pass, hash, a->cd, (int)sizeof(*a->cd));
        size_t hl = strlen(hash);
        ok = h && strlen(h) == hl && CRYPTO_memcmp(h, hash, hl) == 0 && en != NULL;
        explicit_bzero(a->cd->input, sizeof(a->cd->input)); /* libcrypt's copy of pass */
    }
    if (ok) {
        slot->used = true;
        memcpy(slot->key, key, sizeof(key));
    } else {
        log_failure(user, remote, en ? "wrong password" : "unknown user");
    }
out:
    if (ok && user_out)
        memcpy(user_out, user, strlen(user) + 1);
    explicit_bzero(pass, sizeof(pass));
    explicit_bzero(key, sizeof(key));
    return ok;
}
