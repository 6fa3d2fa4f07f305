/*
 * config_decode: scalars (YAML 1.1 booleans, integers, sizes, Go durations) and the walk that
 * decodes a tree into struct config through the schema tables: defaults, types, ranges, freeing.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "config_int.h"

_Static_assert(sizeof(enum log_level) == sizeof(int), "enums are decoded through int");
_Static_assert(sizeof(enum config_cache) == sizeof(int), "enums are decoded through int");

/* ------------------------------------------------------------------------------------------ */
/* Scalars                                                                                     */

size_t config_utf8_next(const unsigned char *s, unsigned long *cp)
{
    size_t len, i;
    unsigned long v;

    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2;
        v = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3;
        v = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4;
        v = s[0] & 0x07;
    } else {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if ((len == 2 && v < 0x80) || (len == 3 && v < 0x800) || (len == 4 && v < 0x10000) ||
        v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return len;
}

bool config_utf8_valid(const char *s)
{
    unsigned long cp;

    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = config_utf8_next(p, &cp);
        if (!n)
            return false;
        p += n;
    }
    return true;
}

bool config_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES",
                                      "on",   "On",   "ON",   "y",   "Y"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO",
                                     "off",   "Off",   "OFF",   "n",  "N"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!strcmp(s, yes[i])) {
            *out = true;
            return true;
        }
        if (!strcmp(s, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

bool config_parse_ll(const char *s, long long *out)
{
    const char *p = s;
    bool neg = false;
    int base = 10;
    unsigned long long v;
    char *end;

    if (*p == '+' || *p == '-')
        neg = *p++ == '-';
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    } else if (p[0] == '0' && (p[1] == 'o' || p[1] == 'O')) {
        base = 8;
        p += 2;
    }
    if (!(base == 16 ? isxdigit((unsigned char)*p) : isdigit((unsigned char)*p)))
        return false;
    errno = 0;
    v = strtoull(p, &end, base);
    if (*end || errno)
        return false;
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return false;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return false;
        *out = (long long)v;
    }
    return true;
}

/* A byte size for regmirror keys: "10GB", "1.5GiB", "512 MB", "100k" (KB, MB, GB, TB are
 * powers of 1000, KiB..TiB and the bare k, m, g, t powers of 1024). */
static bool parse_bytes(const char *s, long long *out)
{
    static const struct {
        const char *unit;
        long double mult;
    } units[] = {{"", 1},
                 {"b", 1},
                 {"kb", 1e3},
                 {"mb", 1e6},
                 {"gb", 1e9},
                 {"tb", 1e12},
                 {"k", 1024.0L},
                 {"kib", 1024.0L},
                 {"m", 1048576.0L},
                 {"mib", 1048576.0L},
                 {"g", 1073741824.0L},
                 {"gib", 1073741824.0L},
                 {"t", 1099511627776.0L},
                 {"tib", 1099511627776.0L}};
    char *end;
    if (!isdigit((unsigned char)*s))
        return false;
    errno = 0;
    long double v = strtold(s, &end);
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]) && !errno; i++) {
        if (strcasecmp(end, units[i].unit) == 0 && v * units[i].mult < (long double)LLONG_MAX) {
            *out = (long long)(v * units[i].mult);
            return true;
        }
    }
    return false;
}

/* Go's time.ParseDuration ("1h30m", "1.5s", "300ms", "-2m"), in nanoseconds. */
static bool parse_go_duration(const char *s, long double *ns)
{
    static const struct {
        const char *unit;
        long double ns;
    } units[] = {{"ns", 1},   {"us", 1e3}, {"\xc2\xb5s", 1e3}, {"\xce\xbcs", 1e3},
                 {"ms", 1e6}, {"s", 1e9},  {"m", 60e9},        {"h", 3600e9}};
    const char *p = s;
    long double total = 0;
    bool neg = false;

    if (*p == '+' || *p == '-')
        neg = *p++ == '-';
    if (!strcmp(p, "0")) {
        *ns = 0;
        return true;
    }
    if (!*p)
        return false;
    while (*p) {
        long double v = 0, scale = 1;
        bool digits = false;
        const char *u;
        size_t ulen, i;

        for (; isdigit((unsigned char)*p); p++, digits = true)
            v = v * 10 + (*p - '0');
        if (*p == '.') {
            for (p++; isdigit((unsigned char)*p); p++, digits = true) {
                scale /= 10;
                v += (*p - '0') * scale;
            }
        }
        if (!digits)
            return false;
        for (u = p; *p && *p != '.' && !isdigit((unsigned char)*p); p++)
            ;
        ulen = (size_t)(p - u);
        for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            if (strlen(units[i].unit) == ulen && !memcmp(u, units[i].unit, ulen))
                break;
        }
        if (i == sizeof(units) / sizeof(units[0]))
            return false;
        total += v * units[i].ns;
        if (total > 9.2e18L) /* Go's limit: int64 nanoseconds */
            return false;
    }
    *ns = neg ? -total : total;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                    */

void config_free_strlist(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

static void free_headers(struct config_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        config_free_strlist(h[i].values, h[i].nvalues);
    }
    free(h);
}

void config_free_kv(struct config_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

void config_free_struct(const struct schema *s, void *base)
{
    for (size_t i = 0; i < s->nfields; i++) {
        const struct field *f = &s->fields[i];

        if (f->flags & F_ALIAS)
            continue;
        switch (f->type) {
        case T_STR:
            free(*AT(base, f->off, char *));
            *AT(base, f->off, char *) = NULL;
            break;
        case T_STRLIST:
            config_free_strlist(*AT(base, f->off, char **), *AT(base, f->noff, size_t));
            *AT(base, f->off, char **) = NULL;
            *AT(base, f->noff, size_t) = 0;
            break;
        case T_HEADERS:
            free_headers(*AT(base, f->off, struct config_header *), *AT(base, f->noff, size_t));
            *AT(base, f->off, struct config_header *) = NULL;
            *AT(base, f->noff, size_t) = 0;
            break;
        case T_KV:
            config_free_kv(*AT(base, f->off, struct config_kv *), *AT(base, f->noff, size_t));
            *AT(base, f->off, struct config_kv *) = NULL;
            *AT(base, f->noff, size_t) = 0;
            break;
        case T_STRUCT:
            config_free_struct(f->sub, base);
            break;
        case T_LIST: {
            const struct schema *sub = f->sub;
            char *arr = *AT(base, f->off, char *);
            size_t n = *AT(base, f->noff, size_t);
            for (size_t j = 0; j < n; j++)
                config_free_struct(sub, arr + j * sub->size);
            free(arr);
            *AT(base, f->off, char *) = NULL;
            *AT(base, f->noff, size_t) = 0;
            break;
        }
        default:
            break;
        }
    }
}

void config_set_string(struct ctx *c, char **slot, const char *value)
{
    char *s = strdup(value);

    if (!s) {
        config_oom(c);
        return;
    }
    free(*slot);
    *slot = s;
}

static void expected_form(const struct field *f, char *buf, size_t len)
{
    switch (f->type) {
    case T_STR:
        snprintf(buf, len, "%s", f->hint ? f->hint : "a string");
        break;
    case T_BOOL:
        snprintf(buf, len, "true or false");
        break;
    case T_INT:
    case T_I64:
        if (f->flags & F_BYTES)
            snprintf(buf, len, "a size like \"%s\"", f->hint ? f->hint : "10GB");
        else if (f->min == INT_MIN)
            snprintf(buf, len, "an integer");
        else if (f->max == INT_MAX || f->max == LLONG_MAX)
            snprintf(buf, len, "an integer of at least %lld", f->min);
        else
            snprintf(buf, len, "an integer from %lld to %lld", f->min, f->max);
        break;
    case T_DUR:
        snprintf(buf, len, "a duration like \"%s\"", f->hint ? f->hint : "10s");
        break;
    case T_AMOUNT:
        snprintf(buf, len, "a count from %lld to %lld or a percentage like \"%s\"", f->min, f->max,
                 f->hint ? f->hint : "10%");
        break;
    case T_ENUM: {
        const struct enum_name *e = f->sub;
        size_t o = (size_t)snprintf(buf, len, "one of");
        for (; e->name && o < len; e++) {
            if (e->name[0])
                o += (size_t)snprintf(buf + o, len - o, "%s %s", e == f->sub ? "" : ",", e->name);
        }
        break;
    }
    case T_STRLIST:
        snprintf(buf, len, "a list of strings like [a, b]");
        break;
    case T_HEADERS:
        snprintf(buf, len,
                 "a mapping of header names to lists of values, like "
                 "X-Content-Type-Options: [nosniff]");
        break;
    case T_LIST:
        snprintf(buf, len, "a list of mappings");
        break;
    default:
        snprintf(buf, len, "a mapping");
        break;
    }
}

static void type_error(struct ctx *c, const struct field *f, const struct node *n, const char *path)
{
    char form[256], got[128];

    expected_form(f, form, sizeof(form));
    ERR(c, n, "%s: expected %s, got %s", path, form, config_describe(n, got, sizeof(got)));
}

/* Strings of a list; a NULL element is "". Returns 0, or -1 after reporting. */
static int decode_strings(struct ctx *c, const struct field *f, const struct node *n,
                          const char *path, char ***out, size_t *nout)
{
    char **list;
    size_t i;

    if (n->kind != NODE_SEQ) {
        type_error(c, f, n, path);
        return -1;
    }
    list = calloc(n->n ? n->n : 1, sizeof(*list));
    if (!list) {
        config_oom(c);
        return -1;
    }
    for (i = 0; i < n->n; i++) {
        const struct node *e = n->items[i];
        if (e->kind == NODE_MAP || e->kind == NODE_SEQ) {
            type_error(c, f, n, path);
            break;
        }
        list[i] = strdup(e->text ? e->text : "");
        if (!list[i]) {
            config_oom(c);
            break;
        }
    }
    if (i < n->n) {
        config_free_strlist(list, i + 1);
        return -1;
    }
    *out = list;
    *nout = n->n;
    return 0;
}

static void decode_headers(struct ctx *c, const struct field *f, const struct node *n,
                           const char *path, void *base)
{
    struct config_header *h;
    size_t i;

    if (n->kind != NODE_MAP) {
        type_error(c, f, n, path);
        return;
    }
    h = calloc(n->n ? n->n : 1, sizeof(*h));
    if (!h) {
        config_oom(c);
        return;
    }
    for (i = 0; i < n->n; i++) {
        char sub[PATH_LEN];
        config_join(sub, path, n->keys[i]);
        h[i].name = strdup(n->keys[i]);
        if (!h[i].name) {
            config_oom(c);
            break;
        }
        if (decode_strings(c, f, n->items[i], sub, &h[i].values, &h[i].nvalues) < 0)
            break;
    }
    if (i < n->n) {
        free_headers(h, i + 1);
        return;
    }
    free_headers(*AT(base, f->off, struct config_header *), *AT(base, f->noff, size_t));
    *AT(base, f->off, struct config_header *) = h;
    *AT(base, f->noff, size_t) = n->n;
}

void config_flatten(struct ctx *c, const struct node *n, const char *prefix, const char *path,
                    struct config_kv **kv, size_t *nkv, size_t *cap)
{
    char key[PATH_LEN];
    struct config_kv *grown;

    if (n->kind == NODE_MAP || n->kind == NODE_SEQ) {
        for (size_t i = 0; i < n->n; i++) {
            char index[24];
            const char *k = n->keys ? n->keys[i] : index;
            int len;
            snprintf(index, sizeof(index), "%zu", i);
            if (prefix[0])
                len = snprintf(key, sizeof(key), "%s.%s", prefix, k);
            else
                len = snprintf(key, sizeof(key), "%s", k);
            if (len > MAX_KEY) {
                ERR(c, n->items[i], "%s: nested keys longer than %d bytes", path, MAX_KEY);
                return;
            }
            config_flatten(c, n->items[i], key, path, kv, nkv, cap);
        }
        return;
    }
    switch (buf_grow_items(kv, cap, *nkv + 1, sizeof(**kv), MAX_ITEMS)) {
    case BUF_OK:
        break;
    case BUF_TOO_BIG:
        ERR(c, n, "%s: more than %d values", path, MAX_ITEMS);
        return;
    default:
        config_oom(c);
        return;
    }
    grown = *kv;
    grown[*nkv].key = strdup(prefix);
    grown[*nkv].value = strdup(n->text ? n->text : "");
    if (!grown[*nkv].key || !grown[*nkv].value) {
        free(grown[*nkv].key);
        free(grown[*nkv].value);
        config_oom(c);
        return;
    }
    (*nkv)++;
}

static void decode_kv(struct ctx *c, const struct field *f, const struct node *n, const char *path,
                      void *base)
{
    struct config_kv *kv = NULL;
    size_t nkv = 0, cap = 0;

    if (n->kind != NODE_MAP) {
        type_error(c, f, n, path);
        return;
    }
    config_flatten(c, n, "", path, &kv, &nkv, &cap);
    config_free_kv(*AT(base, f->off, struct config_kv *), *AT(base, f->noff, size_t));
    *AT(base, f->off, struct config_kv *) = kv;
    *AT(base, f->noff, size_t) = nkv;
}

static void decode_value(struct ctx *c, const struct field *f, const struct node *n,
                         const char *path, void *base, bool is_default);
static void decode_default(struct ctx *c, const struct field *f, const char *path, void *base);

static void decode_list(struct ctx *c, const struct field *f, const struct node *n,
                        const char *path, void *base)
{
    const struct schema *sub = f->sub;
    char *arr;

    if (n->kind != NODE_SEQ) {
        type_error(c, f, n, path);
        return;
    }
    arr = calloc(n->n ? n->n : 1, sub->size);
    if (!arr) {
        config_oom(c);
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        char sub_path[PATH_LEN];
        snprintf(sub_path, sizeof(sub_path), "%s[%zu]", path, i);
        config_apply_defaults(c, sub, arr + i * sub->size);
        if (n->items[i]->kind == NODE_NULL)
            continue;
        config_decode_struct(c, sub, n->items[i], sub_path, arr + i * sub->size);
    }
    {
        char *old = *AT(base, f->off, char *);
        size_t nold = *AT(base, f->noff, size_t);
        for (size_t j = 0; j < nold; j++)
            config_free_struct(sub, old + j * sub->size);
        free(old);
    }
    *AT(base, f->off, char *) = arr;
    *AT(base, f->noff, size_t) = n->n;
}

static void decode_int(struct ctx *c, const struct field *f, const struct node *n, const char *path,
                       void *base, bool is_default)
{
    long long v;
    char form[256], got[128];

    bool ok = config_parse_ll(n->text, &v) || ((f->flags & F_BYTES) && parse_bytes(n->text, &v));
    if (!ok || (v < f->min && !(f->flags & F_CLAMP)) || v > f->max) {
        expected_form(f, form, sizeof(form));
        ERR(c, n, "%s: expected %s, got %s", path, form, config_describe(n, got, sizeof(got)));
        return;
    }
    if (v < f->min) {
        WARN(c, n, "%s: %lld is below the minimum, %lld is used", path, v, f->min);
        v = f->min;
    }
    if ((f->flags & F_ZERODEF) && v <= 0 && !is_default) {
        decode_default(c, f, path, base);
        return;
    }
    if (f->type == T_INT)
        *AT(base, f->off, int) = (int)v;
    else
        *AT(base, f->off, int64_t) = (int64_t)v;
}

static void decode_duration(struct ctx *c, const struct field *f, const struct node *n,
                            const char *path, void *base, bool is_default)
{
    long long bare;
    long double ns;
    char got[128];

    if (config_parse_ll(n->text, &bare)) {
        /* the reference reads a number without a unit as nanoseconds */
        ns = (long double)bare;
        if (bare > 0)
            WARN(c, n, "%s: %lld has no unit and is read as nanoseconds; write e.g. \"%llds\"",
                 path, bare, bare);
    } else if (!parse_go_duration(n->text, &ns)) {
        ERR(c, n, "%s: expected a duration like \"%s\", got %s", path, f->hint ? f->hint : "10s",
            config_describe(n, got, sizeof(got)));
        return;
    }
    if (ns < 0) {
        ERR(c, n, "%s: expected a duration that is not negative, got %s", path,
            config_describe(n, got, sizeof(got)));
        return;
    }
    if ((f->flags & F_ZERODEF) && ns == 0 && !is_default) {
        decode_default(c, f, path, base);
        return;
    }
    /* rounded up: a short non-zero timeout must not become "none" */
    *AT(base, f->off, int64_t) = (int64_t)((ns + 999999) / 1000000);
}

/* "N" (a count in [min, max]) or "N%" (0 to 100): digits only, no sign, no space. */
static void decode_amount(struct ctx *c, const struct field *f, const struct node *n,
                          const char *path, void *base)
{
    const char *s = n->text;
    size_t len = strlen(s);
    bool percent = len > 0 && s[len - 1] == '%';
    size_t digits = percent ? len - 1 : len;
    long long v = 0;
    bool ok = digits > 0 && digits <= 18;
    for (size_t i = 0; ok && i < digits; i++) {
        ok = s[i] >= '0' && s[i] <= '9';
        v = v * 10 + (s[i] - '0');
    }
    ok = ok && (percent ? v <= 100 : v >= f->min && v <= f->max);
    if (!ok) {
        char form[256], got[128];
        expected_form(f, form, sizeof(form));
        ERR(c, n, "%s: expected %s, got %s", path, form, config_describe(n, got, sizeof(got)));
        return;
    }
    *AT(base, f->off, struct config_amount) = (struct config_amount){(int64_t)v, percent};
}

static void decode_enum(struct ctx *c, const struct field *f, const struct node *n,
                        const char *path, void *base)
{
    for (const struct enum_name *e = f->sub; e->name; e++) {
        if (!strcasecmp(e->name, n->text)) {
            *AT(base, f->off, int) = e->value;
            if (f->flags & F_VARIANT)
                *AT(base, f->noff, bool) = e->variant != 0;
            return;
        }
    }
    type_error(c, f, n, path);
}

/* Decodes the field's default text into it. */
static void decode_default(struct ctx *c, const struct field *f, const char *path, void *base)
{
    struct node def = {.kind = NODE_SCALAR, .text = (char *)f->def};

    if (f->def)
        decode_value(c, f, &def, path, base, true);
}

/* Decodes one value into its field; is_default marks the field's own default text. */
static void decode_value(struct ctx *c, const struct field *f, const struct node *n,
                         const char *path, void *base, bool is_default)
{
    if (n->kind == NODE_NULL)
        return; /* an empty value leaves the default */
    if ((f->type <= T_ENUM) && n->kind != NODE_SCALAR) {
        type_error(c, f, n, path);
        return;
    }
    switch (f->type) {
    case T_STR:
        if ((f->flags & F_ZERODEF) && !n->text[0] && !is_default && f->def) {
            config_set_string(c, AT(base, f->off, char *), f->def);
            return;
        }
        config_set_string(c, AT(base, f->off, char *), n->text);
        break;
    case T_BOOL: {
        bool v;
        char got[128];
        if (!config_parse_bool(n->text, &v)) {
            ERR(c, n, "%s: expected true or false, got %s", path,
                config_describe(n, got, sizeof(got)));
            return;
        }
        if (f->flags & F_NEGATE)
            v = !v;
        if (!(f->flags & F_ONLYTRUE) || v)
            *AT(base, f->off, bool) = v;
        break;
    }
    case T_INT:
    case T_I64:
        decode_int(c, f, n, path, base, is_default);
        break;
    case T_DUR:
        decode_duration(c, f, n, path, base, is_default);
        break;
    case T_AMOUNT:
        decode_amount(c, f, n, path, base);
        break;
    case T_ENUM:
        decode_enum(c, f, n, path, base);
        break;
    case T_STRLIST: {
        char **list;
        size_t count;
        if (decode_strings(c, f, n, path, &list, &count) < 0)
            return;
        config_free_strlist(*AT(base, f->off, char **), *AT(base, f->noff, size_t));
        *AT(base, f->off, char **) = list;
        *AT(base, f->noff, size_t) = count;
        break;
    }
    case T_HEADERS:
        decode_headers(c, f, n, path, base);
        break;
    case T_KV:
        decode_kv(c, f, n, path, base);
        break;
    case T_STRUCT:
        config_decode_struct(c, f->sub, n, path, base);
        break;
    case T_LIST:
        decode_list(c, f, n, path, base);
        break;
    }
}

void config_apply_defaults(struct ctx *c, const struct schema *s, void *base)
{
    for (size_t i = 0; i < s->nfields; i++) {
        const struct field *f = &s->fields[i];

        if (f->type == T_STRUCT)
            config_apply_defaults(c, f->sub, base);
        else if (f->type == T_STR && !(f->flags & F_ALIAS))
            config_set_string(c, AT(base, f->off, char *), f->def ? f->def : "");
        else
            decode_default(c, f, f->key, base);
    }
}

void config_decode_struct(struct ctx *c, const struct schema *s, const struct node *n,
                          const char *path, void *base)
{
    if (n->kind == NODE_NULL)
        return;
    if (n->kind != NODE_MAP) {
        char got[128];
        ERR(c, n, "%s: expected a mapping, got %s", path[0] ? path : c->name,
            config_describe(n, got, sizeof(got)));
        return;
    }
    for (size_t i = 0; i < s->nfields; i++) {
        const struct field *f = &s->fields[i];
        const struct node *v = config_map_get(n, f->key);
        char sub[PATH_LEN];

        if (!v)
            continue;
        config_join(sub, path, f->key);
        decode_value(c, f, v, sub, base, false);
    }
    if (s->flags & S_OPEN)
        return;
    for (size_t i = 0; i < n->n; i++) {
        char sub[PATH_LEN];
        const char *near = NULL;

        if (config_find_field(s, n->keys[i]))
            continue;
        for (size_t j = 0; j < s->nfields; j++) {
            if (!strcasecmp(s->fields[j].key, n->keys[i]))
                near = s->fields[j].key;
        }
        config_join(sub, path, n->keys[i]);
        if (near)
            WARN(c, n->items[i], "unknown key %s (did you mean %s?)", sub, near);
        else
            WARN(c, n->items[i], "unknown key %s", sub);
    }
}
