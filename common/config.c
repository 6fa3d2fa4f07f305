#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <regex.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

/*
 * The file is read in three steps: libyaml events build a small generic tree (struct node),
 * REGISTRY_* variables are merged into that tree, and the tree is decoded into struct config by
 * walking tables of fields (struct field / struct schema). The same tables drive defaults,
 * environment matching, printing and freeing, so a new key is one table line.
 */

/* Limits on what input can make us allocate or recurse into. */
#define CONFIG_MAX_FILE (1024 * 1024)
#define MAX_DEPTH 32    /* nesting of the YAML tree */
#define MAX_NODES 20000 /* nodes per load, aliases expanded, environment included */
#define MAX_ITEMS 1000  /* keys of one mapping, elements of one list, flattened entries */
#define MAX_ANCHORS 64
#define MAX_ENV_PARTS 16
#define MAX_KEY 128 /* bytes of a key, flattened "a.b.c" keys too: printed keys stay short */
#define MAX_MESSAGES 100
#define PATH_LEN 256
#define MASK "*****"

_Static_assert(sizeof(enum log_level) == sizeof(int), "enums are decoded through int");
_Static_assert(sizeof(enum config_cache) == sizeof(int), "enums are decoded through int");

/* ------------------------------------------------------------------------------------------ */
/* The generic tree and the load context                                                       */

enum node_kind { NODE_NULL, NODE_SCALAR, NODE_MAP, NODE_SEQ };

struct node {
    enum node_kind kind;
    bool quoted;     /* scalar was quoted or tagged !!str: never a bool, number or null */
    unsigned line;   /* 1-based line in the file, 0 for values from the environment */
    const char *env; /* the variable the value came from, or NULL */
    char *text;      /* NODE_SCALAR */
    char **keys;     /* NODE_MAP: keys[i] names items[i] */
    struct node **items;
    size_t n, cap;
};

struct envvar {
    char *name;
    char *value;
};

struct ctx {
    struct config_diag *diag;
    const char *name; /* file name for messages */
    size_t nodes;
    bool failed;
    struct envvar *envs; /* kept until the end of the load: nodes point at the names */
    size_t nenvs;
};

/* ------------------------------------------------------------------------------------------ */
/* Diagnostics                                                                                 */

static void add_message(char ***list, size_t *n, const char *text)
{
    char *s;
    char **grown;

    if (*n > MAX_MESSAGES)
        return;
    s = strdup(*n == MAX_MESSAGES ? "further messages left out" : text);
    if (!s)
        return;
    grown = realloc(*list, (*n + 1) * sizeof(*grown));
    if (!grown) {
        free(s);
        return;
    }
    grown[(*n)++] = s;
    *list = grown;
}

/* Appends " (config.yml:12)" or " (from REGISTRY_HTTP_ADDR)" when the origin is known. */
static void report(struct ctx *c, bool error, const struct node *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report(struct ctx *c, bool error, const struct node *n, const char *fmt, ...)
{
    char what[1024];
    char line[1400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (n && n->env)
        snprintf(line, sizeof(line), "%s (from %s)", what, n->env);
    else if (n && n->line)
        snprintf(line, sizeof(line), "%s (%s:%u)", what, c->name, n->line);
    else
        snprintf(line, sizeof(line), "%s", what);
    if (error) {
        c->failed = true;
        add_message(&c->diag->errors, &c->diag->nerrors, line);
    } else {
        add_message(&c->diag->warnings, &c->diag->nwarnings, line);
    }
}

#define ERR(c, n, ...) report((c), true, (n), __VA_ARGS__)
#define WARN(c, n, ...) report((c), false, (n), __VA_ARGS__)

static void oom(struct ctx *c)
{
    ERR(c, NULL, "out of memory");
}

/* A scalar for messages: quoted, cut at 60 bytes, control bytes escaped. */
static const char *quote_msg(const char *s, char *buf, size_t len)
{
    size_t o = 0;

    buf[o++] = '"';
    for (size_t i = 0; s[i] && o + 8 < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i == 60) {
            o += (size_t)snprintf(buf + o, len - o, "...");
            break;
        }
        if (ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\')
            o += (size_t)snprintf(buf + o, len - o, "\\x%02x", ch);
        else
            buf[o++] = (char)ch;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

static const char *describe(const struct node *n, char *buf, size_t len)
{
    switch (n->kind) {
    case NODE_MAP:
        return "a mapping";
    case NODE_SEQ:
        return "a list";
    case NODE_NULL:
        return "nothing";
    default:
        return quote_msg(n->text, buf, len);
    }
}

static void join(char *out, const char *path, const char *key)
{
    if (path[0])
        snprintf(out, PATH_LEN, "%s.%s", path, key);
    else
        snprintf(out, PATH_LEN, "%s", key);
}

/* ------------------------------------------------------------------------------------------ */
/* Tree operations                                                                             */

static struct node *node_new(struct ctx *c, enum node_kind kind, unsigned line, const char *env)
{
    struct node *n;

    if (c->nodes >= MAX_NODES)
        return NULL;
    n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    c->nodes++;
    n->kind = kind;
    n->line = line;
    n->env = env;
    return n;
}

static void node_free(struct node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->keys)
            free(n->keys[i]);
        node_free(n->items[i]);
    }
    free(n->keys);
    free(n->items);
    free(n->text);
    free(n);
}

/* Appends (key, v) to a mapping or v to a list; takes both on success. */
static int node_push(struct node *n, char *key, struct node *v)
{
    if (n->n >= MAX_ITEMS)
        return -1;
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 8;
        struct node **items = realloc(n->items, cap * sizeof(*items));
        if (!items)
            return -1;
        n->items = items;
        if (n->kind == NODE_MAP) {
            char **keys = realloc(n->keys, cap * sizeof(*keys));
            if (!keys)
                return -1;
            n->keys = keys;
        }
        n->cap = cap;
    }
    if (n->kind == NODE_MAP)
        n->keys[n->n] = key;
    n->items[n->n++] = v;
    return 0;
}

static long map_index(const struct node *m, const char *key)
{
    if (!m || m->kind != NODE_MAP)
        return -1;
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->keys[i], key) == 0)
            return (long)i;
    }
    return -1;
}

static struct node *map_get(const struct node *m, const char *key)
{
    long i = map_index(m, key);
    return i < 0 || !m->items ? NULL : m->items[i];
}

/* Sets key to v in the map m, replacing an existing value; takes v (freed on failure). */
static int map_set(struct ctx *c, struct node *m, const char *key, struct node *v)
{
    long i = map_index(m, key);
    char *k;

    if (m->kind != NODE_MAP) { /* node_push would keep v but not the key */
        node_free(v);
        ERR(c, NULL, "internal error: %s set on a value that is not a map", key);
        return -1;
    }
    if (i >= 0 && m->items) {
        node_free(m->items[i]);
        m->items[i] = v;
        return 0;
    }
    k = strdup(key);
    if (!k || node_push(m, k, v) < 0) {
        free(k);
        node_free(v);
        ERR(c, NULL, "too many keys or out of memory while applying the environment");
        return -1;
    }
    return 0;
}

/* The node at a dotted path of fixed keys ("http.tls.minimumtls"), or NULL. */
static struct node *tree_at(const struct node *root, const char *path)
{
    char key[64];
    const struct node *n = root;

    while (n && *path) {
        size_t len = strcspn(path, ".");
        snprintf(key, sizeof(key), "%.*s", (int)len, path);
        n = map_get(n, key);
        path += len + (path[len] == '.');
    }
    return (struct node *)n;
}

static struct node *node_copy(struct ctx *c, const struct node *src, int depth)
{
    struct node *n;

    if (depth > MAX_DEPTH)
        return NULL;
    n = node_new(c, src->kind, src->line, src->env);
    if (!n)
        return NULL;
    n->quoted = src->quoted;
    if (src->text) {
        n->text = strdup(src->text);
        if (!n->text)
            goto fail;
    }
    for (size_t i = 0; i < src->n; i++) {
        char *k = NULL;
        struct node *v = node_copy(c, src->items[i], depth + 1);
        if (v && src->kind == NODE_MAP)
            k = strdup(src->keys[i]);
        if (!v || (src->kind == NODE_MAP && !k) || node_push(n, k, v) < 0) {
            free(k);
            node_free(v);
            goto fail;
        }
    }
    return n;
fail:
    node_free(n);
    return NULL;
}

static void node_mark_env(struct node *n, const char *env)
{
    n->env = env;
    n->line = 0;
    for (size_t i = 0; i < n->n; i++)
        node_mark_env(n->items[i], env);
}

/* ------------------------------------------------------------------------------------------ */
/* YAML to tree                                                                                */

struct anchor {
    char *name;
    struct node *node; /* a private copy: the tree's own node may be replaced later */
};

struct builder {
    struct ctx *c;
    yaml_parser_t parser;
    const char *env;
    struct anchor anchors[MAX_ANCHORS];
    size_t nanchors;
    char *error;
};

static void build_error(struct builder *b, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void build_error(struct builder *b, unsigned line, const char *fmt, ...)
{
    char what[512];
    va_list ap;

    if (b->error)
        return;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (line && asprintf(&b->error, "%s:%u: %s", b->c->name, line, what) < 0)
        b->error = NULL;
    else if (!line)
        b->error = strdup(what);
}

static int next_event(struct builder *b, yaml_event_t *ev)
{
    if (yaml_parser_parse(&b->parser, ev))
        return 0;
    build_error(b, (unsigned)b->parser.problem_mark.line + 1, "YAML syntax error: %s%s%s",
                b->parser.context ? b->parser.context : "", b->parser.context ? ": " : "",
                b->parser.problem ? b->parser.problem : "unreadable input");
    return -1;
}

static bool is_null_word(const char *s)
{
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static void remember_anchor(struct builder *b, const unsigned char *name, const struct node *n,
                            int depth)
{
    struct node *copy;
    size_t i;

    if (!name)
        return;
    for (i = 0; i < b->nanchors; i++) {
        if (!strcmp(b->anchors[i].name, (const char *)name))
            break;
    }
    if (i == MAX_ANCHORS) {
        build_error(b, n->line, "more than %d anchors", MAX_ANCHORS);
        return;
    }
    copy = node_copy(b->c, n, depth);
    if (!copy) {
        build_error(b, n->line, "anchor &%s is too large", (const char *)name);
        return;
    }
    if (i == b->nanchors) {
        b->anchors[i].name = strdup((const char *)name);
        if (!b->anchors[i].name) {
            node_free(copy);
            build_error(b, n->line, "out of memory");
            return;
        }
        b->nanchors++;
    }
    node_free(b->anchors[i].node);
    b->anchors[i].node = copy;
}

static struct node *build_node(struct builder *b, yaml_event_t *ev, int depth);

/* YAML merge keys ("<<: *defaults"): keys not written in the mapping come from the sources. */
static int merge_into(struct builder *b, struct node *m, struct node *src)
{
    if (src->kind == NODE_SEQ) {
        for (size_t i = 0; i < src->n; i++) {
            if (merge_into(b, m, src->items[i]) < 0)
                return -1;
        }
        return 0;
    }
    if (src->kind != NODE_MAP) {
        build_error(b, src->line, "a merge key (<<) needs a mapping or a list of mappings");
        return -1;
    }
    for (size_t i = 0; i < src->n; i++) {
        if (map_index(m, src->keys[i]) >= 0)
            continue;
        if (node_push(m, src->keys[i], src->items[i]) < 0) {
            build_error(b, src->line, "more than %d keys in one mapping", MAX_ITEMS);
            return -1;
        }
        src->keys[i] = NULL;
        src->items[i] = NULL;
    }
    return 0;
}

static struct node *build_map(struct builder *b, unsigned line, int depth)
{
    struct node *m = node_new(b->c, NODE_MAP, line, b->env);
    struct node *merges[8];
    size_t nmerges = 0;
    yaml_event_t ev;

    if (!m) {
        build_error(b, line, "the document is too large (more than %d values)", MAX_NODES);
        return NULL;
    }
    for (;;) {
        struct node *k, *v;
        bool merge;
        long at;

        if (next_event(b, &ev) < 0)
            goto fail;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        k = build_node(b, &ev, depth + 1);
        yaml_event_delete(&ev);
        if (!k)
            goto fail;
        if (k->kind == NODE_MAP || k->kind == NODE_SEQ) {
            build_error(b, k->line, "a mapping key must be a plain value");
            node_free(k);
            goto fail;
        }
        if (!k->text)
            k->text = strdup("");
        if (!k->text) {
            node_free(k);
            goto fail;
        }
        if (strlen(k->text) > MAX_KEY) {
            build_error(b, k->line, "a key is longer than %d bytes", MAX_KEY);
            node_free(k);
            goto fail;
        }
        merge = k->kind == NODE_SCALAR && !k->quoted && !strcmp(k->text, "<<");
        if (next_event(b, &ev) < 0) {
            node_free(k);
            goto fail;
        }
        v = build_node(b, &ev, depth + 1);
        yaml_event_delete(&ev);
        if (!v) {
            node_free(k);
            goto fail;
        }
        /* a block mapping or list starts on the next line; messages about it name the key's */
        if (v->kind == NODE_MAP || v->kind == NODE_SEQ)
            v->line = k->line;
        if (merge) {
            node_free(k);
            if (nmerges == sizeof(merges) / sizeof(merges[0])) {
                build_error(b, v->line, "too many merge keys in one mapping");
                node_free(v);
                goto fail;
            }
            merges[nmerges++] = v;
            continue;
        }
        at = map_index(m, k->text);
        if (at >= 0) {
            /* as the reference registry's YAML reader: the later value wins */
            WARN(b->c, k, "duplicate key \"%s\": the later value is used", k->text);
            node_free(m->items[at]);
            m->items[at] = v;
            node_free(k);
            continue;
        }
        if (node_push(m, k->text, v) < 0) {
            build_error(b, k->line, "more than %d keys in one mapping", MAX_ITEMS);
            node_free(k);
            node_free(v);
            goto fail;
        }
        k->text = NULL;
        node_free(k);
    }
    for (size_t i = 0; i < nmerges; i++) {
        if (merge_into(b, m, merges[i]) < 0)
            goto fail;
        node_free(merges[i]);
        merges[i] = NULL;
    }
    return m;
fail:
    for (size_t i = 0; i < nmerges; i++)
        node_free(merges[i]);
    node_free(m);
    return NULL;
}

static struct node *build_seq(struct builder *b, unsigned line, int depth)
{
    struct node *s = node_new(b->c, NODE_SEQ, line, b->env);
    yaml_event_t ev;

    if (!s) {
        build_error(b, line, "the document is too large (more than %d values)", MAX_NODES);
        return NULL;
    }
    for (;;) {
        struct node *v;

        if (next_event(b, &ev) < 0)
            goto fail;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return s;
        }
        v = build_node(b, &ev, depth + 1);
        yaml_event_delete(&ev);
        if (!v)
            goto fail;
        if (node_push(s, NULL, v) < 0) {
            build_error(b, v->line, "more than %d elements in one list", MAX_ITEMS);
            node_free(v);
            goto fail;
        }
    }
fail:
    node_free(s);
    return NULL;
}

static struct node *build_scalar(struct builder *b, yaml_event_t *ev, unsigned line)
{
    const char *v = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    struct node *n;

    if (memchr(v, '\0', len)) {
        build_error(b, line, "a value contains a NUL byte");
        return NULL;
    }
    /* an explicit string tag makes "yes" or "10" a string, as quoting does */
    if (tag && (!strcmp(tag, "!") || !strcmp(tag, YAML_STR_TAG)))
        plain = false;
    if ((plain && is_null_word(v)) || (tag && !strcmp(tag, YAML_NULL_TAG)))
        return node_new(b->c, NODE_NULL, line, b->env);
    n = node_new(b->c, NODE_SCALAR, line, b->env);
    if (!n)
        return NULL;
    n->quoted = !plain;
    n->text = strndup(v, len);
    if (!n->text) {
        node_free(n);
        return NULL;
    }
    return n;
}

/* Builds the node that ev starts, reading its children; the caller deletes ev. */
static struct node *build_node(struct builder *b, yaml_event_t *ev, int depth)
{
    unsigned line = b->env ? 0 : (unsigned)ev->start_mark.line + 1;
    const unsigned char *anchor = NULL;
    struct node *n = NULL;

    if (depth > MAX_DEPTH) {
        build_error(b, line, "nested more than %d levels deep", MAX_DEPTH);
        return NULL;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        n = build_scalar(b, ev, line);
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        n = build_seq(b, line, depth);
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        n = build_map(b, line, depth);
        break;
    case YAML_ALIAS_EVENT:
        for (size_t i = 0; i < b->nanchors; i++) {
            if (!strcmp(b->anchors[i].name, (const char *)ev->data.alias.anchor)) {
                n = node_copy(b->c, b->anchors[i].node, depth);
                if (!n)
                    build_error(b, line, "alias *%s expands too far",
                                (const char *)ev->data.alias.anchor);
                return n;
            }
        }
        build_error(b, line, "unknown alias *%s", (const char *)ev->data.alias.anchor);
        return NULL;
    default:
        build_error(b, line, "unexpected YAML structure");
        return NULL;
    }
    if (!n) {
        build_error(b, line, "the document is too large (more than %d values)", MAX_NODES);
        return NULL;
    }
    if (anchor) {
        remember_anchor(b, anchor, n, depth);
        if (b->error) {
            node_free(n);
            return NULL;
        }
    }
    return n;
}

/*
 * Parses the first YAML document of text into a tree (a NODE_NULL root for an empty stream).
 * Returns NULL with *error set (malloc'd) when the text is not YAML or is over the limits.
 */
static struct node *parse_yaml(struct ctx *c, const char *text, size_t len, const char *env,
                               char **error)
{
    struct builder b;
    yaml_event_t ev;
    struct node *root = NULL;

    memset(&b, 0, sizeof(b));
    b.c = c;
    b.env = env;
    *error = NULL;
    if (!yaml_parser_initialize(&b.parser)) {
        *error = strdup("out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&b.parser, (const unsigned char *)text, len);
    if (next_event(&b, &ev) < 0)
        goto out;
    yaml_event_delete(&ev); /* stream start */
    if (next_event(&b, &ev) < 0)
        goto out;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        root = node_new(c, NODE_NULL, 1, env);
        goto out;
    }
    yaml_event_delete(&ev); /* document start */
    if (next_event(&b, &ev) < 0)
        goto out;
    root = build_node(&b, &ev, 0);
    yaml_event_delete(&ev);
    if (!root)
        goto out;
    /* the document must end cleanly; later documents are ignored, as the reference does */
    if (next_event(&b, &ev) < 0) {
        node_free(root);
        root = NULL;
        goto out;
    }
    yaml_event_delete(&ev);
out:
    if (!root && !b.error)
        b.error = strdup("out of memory");
    if (!root)
        *error = b.error;
    else
        free(b.error);
    for (size_t i = 0; i < b.nanchors; i++) {
        free(b.anchors[i].name);
        node_free(b.anchors[i].node);
    }
    yaml_parser_delete(&b.parser);
    return root;
}

/* ------------------------------------------------------------------------------------------ */
/* Scalars                                                                                     */

/* Decodes one UTF-8 sequence at s; returns its length, or 0 when it is not valid UTF-8. */
static size_t utf8_next(const unsigned char *s, unsigned long *cp)
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

static bool utf8_valid(const char *s)
{
    unsigned long cp;

    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_next(p, &cp);
        if (!n)
            return false;
        p += n;
    }
    return true;
}

static bool parse_bool(const char *s, bool *out)
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

/* Decimal, 0x hex or 0o octal, with an optional sign. */
static bool parse_ll(const char *s, long long *out)
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

/* "1h30m", "10s", "250ms", "0s": a Go duration string equal to ms. */
static void format_duration(int64_t ms, char *buf, size_t len)
{
    long long h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, rest = ms % 1000;
    size_t o = 0;

    buf[0] = '\0';
    if (ms <= 0) {
        snprintf(buf, len, "0s");
        return;
    }
    if (h)
        o += (size_t)snprintf(buf + o, len - o, "%lldh", h);
    if (m && o < len)
        o += (size_t)snprintf(buf + o, len - o, "%lldm", m);
    if (s && o < len)
        o += (size_t)snprintf(buf + o, len - o, "%llds", s);
    if (rest && o < len)
        snprintf(buf + o, len - o, "%lldms", rest);
}

/* ------------------------------------------------------------------------------------------ */
/* Schema                                                                                      */

enum ftype {
    T_STR,     /* char * */
    T_BOOL,    /* bool */
    T_INT,     /* int, in [min, max] */
    T_I64,     /* int64_t, in [min, max] */
    T_DUR,     /* int64_t milliseconds */
    T_ENUM,    /* an enum, through int; sub is a NULL-terminated struct enum_name[] */
    T_STRLIST, /* char ** at off, size_t at noff */
    T_HEADERS, /* struct config_header * at off, size_t at noff */
    T_KV,      /* struct config_kv * at off, size_t at noff; nested values flattened */
    T_STRUCT,  /* a section; sub is a struct schema with offsets from the same base */
    T_LIST     /* a list of sections: array at off, count at noff, sub gives the element */
};

#define F_SECRET 0x01    /* printed as MASK */
#define F_ZERODEF 0x02   /* zero or less means the default */
#define F_CLAMP 0x04     /* below min is raised to min, with a warning */
#define F_ALIAS 0x08     /* another spelling of a field stored elsewhere: not printed or freed */
#define F_NEGATE 0x10    /* bool stored negated (validation.disabled) */
#define F_ONLYTRUE 0x20  /* bool: only true is stored (validation.enabled) */
#define F_VARIANT 0x40   /* enum: the matched name's variant goes to the bool at noff */
#define F_SELECTOR 0x80  /* storage, auth: "name" alone means "name: {}" */
#define F_VERBATIM 0x100 /* printed without quotes (version: 0.1) */
#define F_BYTES 0x200    /* integer: a size with a unit ("10GB") is fine too */

struct enum_name {
    const char *name;
    int value;
    int variant;
};

struct ctx;
struct schema;

struct field {
    const char *key;
    enum ftype type;
    unsigned flags;
    size_t off;
    size_t noff;
    const void *sub;
    const char *def;  /* default, as YAML text */
    const char *env;  /* the reference's Go field name, when it is not the key upper-cased */
    const char *hint; /* example of the expected form */
    long long min, max;
};

#define S_OPEN 0x1    /* keys not in the table are handled elsewhere, not warned about */
#define S_MAPLIKE 0x2 /* a map in the reference: the environment may create any key in it */
#define S_ALWAYS 0x4  /* printed as "key: {}" even with nothing in it */

struct printer;

struct schema {
    const struct field *fields;
    size_t nfields;
    size_t size; /* element size, for T_LIST */
    unsigned flags;
    bool (*active)(const void *base); /* printing: the section is shown only when true */
    void (*print_extra)(struct printer *p, const void *base, int indent);
};

#define AT(base, off, type) ((type *)((char *)(base) + (off)))
#define CAT(base, off, type) ((type const *)((const char *)(base) + (off)))
#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))
#define SCHEMA(name, fields, ...)                                                                  \
    static const struct schema name = {fields, NFIELDS(fields), __VA_ARGS__}

#define C(m) offsetof(struct config, m)
#define STR(k, o, ...)                                                                             \
    {                                                                                              \
        .key = k, .type = T_STR, .off = o, __VA_ARGS__                                             \
    }
#define BOOL(k, o, ...)                                                                            \
    {                                                                                              \
        .key = k, .type = T_BOOL, .off = o, __VA_ARGS__                                            \
    }
#define INT(k, o, lo, hi, ...)                                                                     \
    {                                                                                              \
        .key = k, .type = T_INT, .off = o, .min = lo, .max = hi, __VA_ARGS__                       \
    }
#define I64(k, o, lo, hi, ...)                                                                     \
    {                                                                                              \
        .key = k, .type = T_I64, .off = o, .min = lo, .max = hi, __VA_ARGS__                       \
    }
#define DUR(k, o, ...)                                                                             \
    {                                                                                              \
        .key = k, .type = T_DUR, .off = o, __VA_ARGS__                                             \
    }
#define ENUM(k, o, names, ...)                                                                     \
    {                                                                                              \
        .key = k, .type = T_ENUM, .off = o, .sub = names, __VA_ARGS__                              \
    }
#define LIST(k, o, n, ...)                                                                         \
    {                                                                                              \
        .key = k, .type = T_STRLIST, .off = o, .noff = n, __VA_ARGS__                              \
    }
#define HEADERS(k, o, n)                                                                           \
    {                                                                                              \
        .key = k, .type = T_HEADERS, .off = o, .noff = n                                           \
    }
#define KV(k, o, n)                                                                                \
    {                                                                                              \
        .key = k, .type = T_KV, .off = o, .noff = n                                                \
    }
#define SECTION(k, s, ...)                                                                         \
    {                                                                                              \
        .key = k, .type = T_STRUCT, .sub = &s, __VA_ARGS__                                         \
    }
#define SECTIONS(k, o, n, s, ...)                                                                  \
    {                                                                                              \
        .key = k, .type = T_LIST, .off = o, .noff = n, .sub = &s, __VA_ARGS__                      \
    }

#define MIB (1024LL * 1024)

static const struct enum_name log_levels[] = {{"error", LOG_ERROR, 0},
                                              {"warn", LOG_WARN, 0},
                                              {"info", LOG_INFO, 0},
                                              {"debug", LOG_DEBUG, 0},
                                              {NULL, 0, 0}};
static const struct enum_name log_formatters[] = {{"text", LOG_FORMAT_TEXT, 0},
                                                  {"json", LOG_FORMAT_JSON, 0},
                                                  {"logstash", LOG_FORMAT_JSON, 1},
                                                  {NULL, 0, 0}};
static const struct enum_name caches[] = {{"inmemory", CONFIG_CACHE_INMEMORY, 0},
                                          {"redis", CONFIG_CACHE_REDIS, 0},
                                          {"", CONFIG_CACHE_NONE, 0},
                                          {NULL, 0, 0}};
static const struct enum_name platforms[] = {{"all", CONFIG_PLATFORMS_ALL, 0},
                                             {"none", CONFIG_PLATFORMS_NONE, 0},
                                             {"list", CONFIG_PLATFORMS_LIST, 0},
                                             {NULL, 0, 0}};

/* Printing predicates: which optional sections are in effect. */
static bool on_filesystem(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_FILESYSTEM;
}
static bool on_inmemory(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_INMEMORY;
}
static bool on_oss(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_OSS;
}
static bool on_s3(const void *b)
{
    return ((const struct config *)b)->storage.driver == CONFIG_STORAGE_S3;
}
static bool on_tag(const void *b)
{
    return ((const struct config *)b)->storage.tag_concurrencylimit != 0;
}
static bool on_silly(const void *b)
{
    return ((const struct config *)b)->auth.type == CONFIG_AUTH_SILLY;
}
static bool on_token(const void *b)
{
    return ((const struct config *)b)->auth.type == CONFIG_AUTH_TOKEN;
}
static bool on_htpasswd(const void *b)
{
    return ((const struct config *)b)->auth.type == CONFIG_AUTH_HTPASSWD;
}
static bool on_tls(const void *b)
{
    const struct config *c = b;
    return c->http.tls.certificate[0] || c->http.tls.letsencrypt.cachefile[0];
}
static bool on_letsencrypt(const void *b)
{
    return ((const struct config *)b)->http.tls.letsencrypt.cachefile[0] != '\0';
}
static bool on_debug(const void *b)
{
    return ((const struct config *)b)->http.debug.addr[0] != '\0';
}
static bool on_notifications(const void *b)
{
    const struct config *c = b;
    return c->notifications.nendpoints || c->notifications.events_includereferences;
}
static bool on_redis(const void *b)
{
    return ((const struct config *)b)->redis.addr[0] != '\0';
}
static bool on_storagedriver(const void *b)
{
    return ((const struct config *)b)->health.storagedriver.enabled;
}
static bool on_proxy(const void *b)
{
    return ((const struct config *)b)->proxy.remoteurl[0] != '\0';
}
static bool on_schema1(const void *b)
{
    const struct config *c = b;
    return c->compatibility.schema1.enabled || c->compatibility.schema1.signingkeyfile[0];
}
static bool on_bugsnag(const void *b)
{
    return ((const struct config *)b)->reporting.bugsnag.apikey[0] != '\0';
}
static bool on_newrelic(const void *b)
{
    return ((const struct config *)b)->reporting.newrelic.licensekey[0] != '\0';
}

static void print_storage_params(struct printer *p, const void *base, int indent);

/* log */
#define H(m) offsetof(struct config_log_hook, m)
static const struct field smtp_fields[] = {
    STR("addr", H(smtp.addr)),
    STR("username", H(smtp.username)),
    STR("password", H(smtp.password), .flags = F_SECRET),
    BOOL("insecure", H(smtp.insecure)),
};
SCHEMA(smtp_schema, smtp_fields, 0, 0, NULL, NULL);
static const struct field hook_options_fields[] = {
    SECTION("smtp", smtp_schema),
    STR("from", H(from)),
    LIST("to", H(to), H(nto)),
};
SCHEMA(hook_options_schema, hook_options_fields, 0, 0, NULL, NULL);
static const struct field hook_fields[] = {
    BOOL("disabled", H(disabled)),
    STR("type", H(type)),
    LIST("levels", H(levels), H(nlevels)),
    SECTION("options", hook_options_schema, .env = "MAILOPTIONS"),
};
SCHEMA(hook_schema, hook_fields, sizeof(struct config_log_hook), 0, NULL, NULL);
#undef H

static const struct field accesslog_fields[] = {BOOL("disabled", C(log.accesslog_disabled))};
SCHEMA(accesslog_schema, accesslog_fields, 0, 0, NULL, NULL);
static const struct field log_fields[] = {
    SECTION("accesslog", accesslog_schema),
    ENUM("level", C(log.level), log_levels, .def = "info"),
    ENUM("formatter", C(log.formatter), log_formatters, .flags = F_VARIANT,
         .noff = C(log.formatter_logstash), .def = "text"),
    KV("fields", C(log.fields), C(log.nfields)),
    SECTIONS("hooks", C(log.hooks), C(log.nhooks), hook_schema),
    BOOL("reportcaller", C(log.reportcaller)),
};
SCHEMA(log_schema, log_fields, 0, 0, NULL, NULL);

/* storage */
static const struct field filesystem_fields[] = {
    STR("rootdirectory", C(storage.filesystem.rootdirectory), .def = "/var/lib/registry"),
    INT("maxthreads", C(storage.filesystem.maxthreads), 25, INT_MAX, .def = "100",
        .flags = F_CLAMP),
};
SCHEMA(filesystem_schema, filesystem_fields, 0, S_MAPLIKE, on_filesystem, NULL);
static const struct field inmemory_fields[1] = {{.key = NULL}};
static const struct schema inmemory_schema = {inmemory_fields,      0,           0,
                                              S_MAPLIKE | S_ALWAYS, on_inmemory, NULL};
static const struct field oss_fields[] = {
    STR("accesskeyid", C(storage.oss.accesskeyid)),
    STR("accesskeysecret", C(storage.oss.accesskeysecret), .flags = F_SECRET),
    STR("region", C(storage.oss.region)),
    STR("endpoint", C(storage.oss.endpoint)),
    BOOL("internal", C(storage.oss.internal)),
    STR("bucket", C(storage.oss.bucket)),
    BOOL("encrypt", C(storage.oss.encrypt)),
    STR("encryptionkeyid", C(storage.oss.encryptionkeyid)),
    BOOL("secure", C(storage.oss.secure), .def = "true"),
    I64("chunksize", C(storage.oss.chunksize), 5 * MIB, LLONG_MAX, .def = "10485760"),
    STR("rootdirectory", C(storage.oss.rootdirectory)),
};
SCHEMA(oss_schema, oss_fields, 0, S_MAPLIKE, on_oss, NULL);
static const struct field s3_fields[] = {
    STR("accesskey", C(storage.s3.accesskey)),
    STR("secretkey", C(storage.s3.secretkey), .flags = F_SECRET),
    STR("sessiontoken", C(storage.s3.sessiontoken), .flags = F_SECRET),
    STR("region", C(storage.s3.region)),
    STR("regionendpoint", C(storage.s3.regionendpoint)),
    BOOL("forcepathstyle", C(storage.s3.forcepathstyle)),
    BOOL("accelerate", C(storage.s3.accelerate)),
    STR("bucket", C(storage.s3.bucket)),
    BOOL("encrypt", C(storage.s3.encrypt)),
    STR("keyid", C(storage.s3.keyid)),
    BOOL("secure", C(storage.s3.secure), .def = "true"),
    BOOL("skipverify", C(storage.s3.skipverify)),
    BOOL("v4auth", C(storage.s3.v4auth), .def = "true"),
    I64("chunksize", C(storage.s3.chunksize), 5 * MIB, 5 * 1024 * MIB, .def = "10485760"),
    I64("multipartcopychunksize", C(storage.s3.multipartcopychunksize), 5 * MIB, 5 * 1024 * MIB,
        .def = "33554432"),
    I64("multipartcopymaxconcurrency", C(storage.s3.multipartcopymaxconcurrency), 1, LLONG_MAX,
        .def = "100"),
    I64("multipartcopythresholdsize", C(storage.s3.multipartcopythresholdsize), 0, 5 * 1024 * MIB,
        .def = "33554432"),
    STR("rootdirectory", C(storage.s3.rootdirectory)),
    STR("storageclass", C(storage.s3.storageclass), .def = "STANDARD"),
    STR("objectacl", C(storage.s3.objectacl), .def = "private"),
    STR("useragent", C(storage.s3.useragent)),
    STR("loglevel", C(storage.s3.loglevel)),
    STR("redirectendpoint", C(storage.s3.redirectendpoint)),
    BOOL("usedualstack", C(storage.s3.usedualstack)),
    BOOL("usefipsendpoint", C(storage.s3.usefipsendpoint)),
};
SCHEMA(s3_schema, s3_fields, 0, S_MAPLIKE, on_s3, NULL);
static const struct field delete_fields[] = {BOOL("enabled", C(storage.delete_enabled))};
SCHEMA(delete_schema, delete_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field redirect_fields[] = {BOOL("disable", C(storage.redirect_disable))};
SCHEMA(redirect_schema, redirect_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field cache_fields[] = {
    /* the old name first, so that blobdescriptor wins when both are given */
    ENUM("layerinfo", C(storage.cache.blobdescriptor), caches, .flags = F_ALIAS),
    ENUM("blobdescriptor", C(storage.cache.blobdescriptor), caches),
    INT("blobdescriptorsize", C(storage.cache.blobdescriptorsize), 1, INT_MAX, .def = "10000"),
};
SCHEMA(cache_schema, cache_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field uploadpurging_fields[] = {
    BOOL("enabled", C(storage.maintenance.uploadpurging.enabled), .def = "true"),
    DUR("age", C(storage.maintenance.uploadpurging.age_ms), .def = "168h", .hint = "168h"),
    DUR("interval", C(storage.maintenance.uploadpurging.interval_ms), .def = "24h", .hint = "24h",
        .flags = F_ZERODEF),
    BOOL("dryrun", C(storage.maintenance.uploadpurging.dryrun)),
};
SCHEMA(uploadpurging_schema, uploadpurging_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field readonly_fields[] = {
    BOOL("enabled", C(storage.maintenance.readonly)),
};
SCHEMA(readonly_schema, readonly_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field maintenance_fields[] = {
    SECTION("uploadpurging", uploadpurging_schema),
    SECTION("readonly", readonly_schema),
};
SCHEMA(maintenance_schema, maintenance_fields, 0, S_MAPLIKE, NULL, NULL);
static const struct field tag_fields[] = {
    INT("concurrencylimit", C(storage.tag_concurrencylimit), 0, INT_MAX),
};
SCHEMA(tag_schema, tag_fields, 0, S_MAPLIKE, on_tag, NULL);
static const struct field storage_fields[] = {
    SECTION("filesystem", filesystem_schema),
    SECTION("inmemory", inmemory_schema),
    SECTION("oss", oss_schema),
    SECTION("s3", s3_schema),
    SECTION("delete", delete_schema),
    SECTION("redirect", redirect_schema),
    SECTION("cache", cache_schema),
    SECTION("maintenance", maintenance_schema),
    SECTION("tag", tag_schema),
};
SCHEMA(storage_schema, storage_fields, 0, S_OPEN | S_MAPLIKE, NULL, print_storage_params);

/* The storage sections that are not drivers. */
static bool storage_param_section(const char *key)
{
    return !strcmp(key, "delete") || !strcmp(key, "redirect") || !strcmp(key, "cache") ||
           !strcmp(key, "maintenance") || !strcmp(key, "tag");
}

/* auth */
static const struct field silly_fields[] = {
    STR("realm", C(auth.silly.realm)),
    STR("service", C(auth.silly.service)),
};
SCHEMA(silly_schema, silly_fields, 0, S_MAPLIKE, on_silly, NULL);
static const struct field token_fields[] = {
    STR("realm", C(auth.token.realm)),
    STR("service", C(auth.token.service)),
    STR("issuer", C(auth.token.issuer)),
    STR("rootcertbundle", C(auth.token.rootcertbundle)),
    STR("jwks", C(auth.token.jwks)),
    BOOL("autoredirect", C(auth.token.autoredirect)),
    STR("autoredirectpath", C(auth.token.autoredirectpath), .def = "/auth/token"),
    LIST("signingalgorithms", C(auth.token.signingalgorithms), C(auth.token.nsigningalgorithms)),
};
SCHEMA(token_schema, token_fields, 0, S_MAPLIKE, on_token, NULL);
static const struct field htpasswd_fields[] = {
    STR("realm", C(auth.htpasswd.realm)),
    STR("path", C(auth.htpasswd.path)),
};
SCHEMA(htpasswd_schema, htpasswd_fields, 0, S_MAPLIKE, on_htpasswd, NULL);
static const struct schema none_schema = {inmemory_fields, 0, 0, S_MAPLIKE, NULL, NULL};
static const struct field auth_fields[] = {
    SECTION("silly", silly_schema),
    SECTION("token", token_schema),
    SECTION("htpasswd", htpasswd_schema),
    SECTION("none", none_schema),
};
SCHEMA(auth_schema, auth_fields, 0, S_OPEN | S_MAPLIKE, NULL, NULL);

/* middleware */
#define M(m) offsetof(struct config_middleware, m)
static const struct field middleware_fields[] = {
    STR("name", M(name)),
    BOOL("disabled", M(disabled)),
    KV("options", M(options), M(noptions)),
};
#undef M
SCHEMA(middleware_schema, middleware_fields, sizeof(struct config_middleware), 0, NULL, NULL);
static const struct field middlewares_fields[] = {
    SECTIONS("registry", C(middleware.registry), C(middleware.nregistry), middleware_schema),
    SECTIONS("repository", C(middleware.repository), C(middleware.nrepository), middleware_schema),
    SECTIONS("storage", C(middleware.storage), C(middleware.nstorage), middleware_schema),
};
SCHEMA(middlewares_schema, middlewares_fields, 0, S_MAPLIKE, NULL, NULL);

/* reporting */
static const struct field bugsnag_fields[] = {
    STR("apikey", C(reporting.bugsnag.apikey), .flags = F_SECRET),
    STR("releasestage", C(reporting.bugsnag.releasestage)),
    STR("endpoint", C(reporting.bugsnag.endpoint)),
};
SCHEMA(bugsnag_schema, bugsnag_fields, 0, 0, on_bugsnag, NULL);
static const struct field newrelic_fields[] = {
    STR("licensekey", C(reporting.newrelic.licensekey), .flags = F_SECRET),
    STR("name", C(reporting.newrelic.name)),
    BOOL("verbose", C(reporting.newrelic.verbose)),
};
SCHEMA(newrelic_schema, newrelic_fields, 0, 0, on_newrelic, NULL);
static const struct field reporting_fields[] = {
    SECTION("bugsnag", bugsnag_schema),
    SECTION("newrelic", newrelic_schema),
};
SCHEMA(reporting_schema, reporting_fields, 0, 0, NULL, NULL);

/* http */
static const struct field letsencrypt_fields[] = {
    STR("cachefile", C(http.tls.letsencrypt.cachefile)),
    STR("email", C(http.tls.letsencrypt.email)),
    LIST("hosts", C(http.tls.letsencrypt.hosts), C(http.tls.letsencrypt.nhosts)),
    STR("directoryurl", C(http.tls.letsencrypt.directoryurl)),
};
SCHEMA(letsencrypt_schema, letsencrypt_fields, 0, 0, on_letsencrypt, NULL);
static const struct field tls_fields[] = {
    STR("certificate", C(http.tls.certificate)),
    STR("key", C(http.tls.key)),
    LIST("clientcas", C(http.tls.clientcas), C(http.tls.nclientcas)),
    STR("clientauth", C(http.tls.clientauth)),
    STR("minimumtls", C(http.tls.minimumtls), .def = "tls1.2", .flags = F_ZERODEF),
    LIST("ciphersuites", C(http.tls.ciphersuites), C(http.tls.nciphersuites)),
    SECTION("letsencrypt", letsencrypt_schema),
};
SCHEMA(tls_schema, tls_fields, 0, 0, on_tls, NULL);
static const struct field prometheus_fields[] = {
    BOOL("enabled", C(http.debug.prometheus_enabled)),
    STR("path", C(http.debug.prometheus_path), .def = "/metrics", .flags = F_ZERODEF),
};
SCHEMA(prometheus_schema, prometheus_fields, 0, 0, NULL, NULL);
static const struct field debug_fields[] = {
    STR("addr", C(http.debug.addr), .hint = "a string like \"localhost:5001\""),
    SECTION("prometheus", prometheus_schema),
};
SCHEMA(debug_schema, debug_fields, 0, 0, on_debug, NULL);
static const struct field http2_fields[] = {BOOL("disabled", C(http.http2_disabled))};
SCHEMA(http2_schema, http2_fields, 0, 0, NULL, NULL);
static const struct field h2c_fields[] = {BOOL("enabled", C(http.h2c_enabled))};
SCHEMA(h2c_schema, h2c_fields, 0, 0, NULL, NULL);
static const struct field http_fields[] = {
    STR("addr", C(http.addr), .def = ":5000", .flags = F_ZERODEF,
        .hint = "a string like \":5000\" or \"host:port\""),
    STR("net", C(http.net), .def = "tcp", .flags = F_ZERODEF),
    STR("host", C(http.host), .hint = "a URL like \"https://registry.example.com\""),
    STR("prefix", C(http.prefix)),
    STR("secret", C(http.secret), .flags = F_SECRET),
    BOOL("relativeurls", C(http.relativeurls)),
    DUR("draintimeout", C(http.draintimeout_ms), .hint = "60s"),
    SECTION("tls", tls_schema),
    HEADERS("headers", C(http.headers), C(http.nheaders)),
    SECTION("debug", debug_schema),
    SECTION("http2", http2_schema),
    SECTION("h2c", h2c_schema),
};
SCHEMA(http_schema, http_fields, 0, 0, NULL, NULL);

/* notifications */
#define E(m) offsetof(struct config_endpoint, m)
static const struct field ignore_fields[] = {
    LIST("mediatypes", E(ignore.mediatypes), E(ignore.nmediatypes)),
    LIST("actions", E(ignore.actions), E(ignore.nactions)),
};
SCHEMA(ignore_schema, ignore_fields, 0, 0, NULL, NULL);
static const struct field endpoint_fields[] = {
    STR("name", E(name)),
    BOOL("disabled", E(disabled)),
    STR("url", E(url), .hint = "a URL like \"https://listener.example.com/event\""),
    HEADERS("headers", E(headers), E(nheaders)),
    DUR("timeout", E(timeout_ms), .def = "1s", .flags = F_ZERODEF, .hint = "1s"),
    INT("threshold", E(threshold), 0, INT_MAX, .def = "10", .flags = F_ZERODEF),
    DUR("backoff", E(backoff_ms), .def = "1s", .flags = F_ZERODEF, .hint = "1s"),
    LIST("ignoredmediatypes", E(ignoredmediatypes), E(nignoredmediatypes)),
    SECTION("ignore", ignore_schema),
};
#undef E
SCHEMA(endpoint_schema, endpoint_fields, sizeof(struct config_endpoint), 0, NULL, NULL);
static const struct field events_fields[] = {
    BOOL("includereferences", C(notifications.events_includereferences)),
};
SCHEMA(events_schema, events_fields, 0, 0, NULL, NULL);
static const struct field notifications_fields[] = {
    SECTION("events", events_schema, .env = "EVENTCONFIG"),
    SECTIONS("endpoints", C(notifications.endpoints), C(notifications.nendpoints), endpoint_schema),
};
SCHEMA(notifications_schema, notifications_fields, 0, 0, on_notifications, NULL);

/* redis */
static const struct field pool_fields[] = {
    INT("maxidle", C(redis.pool.maxidle), 0, INT_MAX),
    INT("maxactive", C(redis.pool.maxactive), 0, INT_MAX),
    DUR("idletimeout", C(redis.pool.idletimeout_ms), .hint = "300s"),
};
SCHEMA(pool_schema, pool_fields, 0, 0, NULL, NULL);
static const struct field redis_tls_fields[] = {
    BOOL("enabled", C(redis.tls.enabled)),
    STR("certificate", C(redis.tls.certificate)),
    STR("key", C(redis.tls.key)),
    LIST("rootcas", C(redis.tls.rootcas), C(redis.tls.nrootcas)),
};
SCHEMA(redis_tls_schema, redis_tls_fields, 0, 0, NULL, NULL);
static const struct field redis_fields[] = {
    STR("addr", C(redis.addr), .hint = "a string like \"localhost:6379\""),
    LIST("addrs", C(redis.addrs), C(redis.naddrs)),
    STR("username", C(redis.username)),
    STR("password", C(redis.password), .flags = F_SECRET),
    INT("db", C(redis.db), 0, INT_MAX),
    DUR("dialtimeout", C(redis.dialtimeout_ms), .hint = "10ms"),
    DUR("readtimeout", C(redis.readtimeout_ms), .hint = "10ms"),
    DUR("writetimeout", C(redis.writetimeout_ms), .hint = "10ms"),
    /* the newer flat names of the pool settings; pool.* wins when both are given */
    INT("maxidleconns", C(redis.pool.maxidle), 0, INT_MAX, .flags = F_ALIAS),
    INT("poolsize", C(redis.pool.maxactive), 0, INT_MAX, .flags = F_ALIAS),
    DUR("connmaxidletime", C(redis.pool.idletimeout_ms), .flags = F_ALIAS, .hint = "300s"),
    SECTION("pool", pool_schema),
    SECTION("tls", redis_tls_schema),
};
SCHEMA(redis_schema, redis_fields, 0, 0, on_redis, NULL);

/* health */
static const struct field storagedriver_fields[] = {
    BOOL("enabled", C(health.storagedriver.enabled)),
    DUR("interval", C(health.storagedriver.interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", C(health.storagedriver.threshold), 0, INT_MAX),
};
SCHEMA(storagedriver_schema, storagedriver_fields, 0, 0, on_storagedriver, NULL);
#define FC(m) offsetof(struct config_file_check, m)
static const struct field filecheck_fields[] = {
    STR("file", FC(file)),
    DUR("interval", FC(interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", FC(threshold), 0, INT_MAX),
};
#undef FC
SCHEMA(filecheck_schema, filecheck_fields, sizeof(struct config_file_check), 0, NULL, NULL);
#define HC(m) offsetof(struct config_http_check, m)
static const struct field httpcheck_fields[] = {
    STR("uri", HC(uri)),
    HEADERS("headers", HC(headers), HC(nheaders)),
    INT("statuscode", HC(statuscode), 0, 599, .def = "200", .flags = F_ZERODEF),
    DUR("timeout", HC(timeout_ms), .hint = "3s"),
    DUR("interval", HC(interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", HC(threshold), 0, INT_MAX),
};
#undef HC
SCHEMA(httpcheck_schema, httpcheck_fields, sizeof(struct config_http_check), 0, NULL, NULL);
#define TC(m) offsetof(struct config_tcp_check, m)
static const struct field tcpcheck_fields[] = {
    STR("addr", TC(addr)),
    DUR("timeout", TC(timeout_ms), .hint = "3s"),
    DUR("interval", TC(interval_ms), .def = "10s", .flags = F_ZERODEF),
    INT("threshold", TC(threshold), 0, INT_MAX),
};
#undef TC
SCHEMA(tcpcheck_schema, tcpcheck_fields, sizeof(struct config_tcp_check), 0, NULL, NULL);
static const struct field health_fields[] = {
    SECTION("storagedriver", storagedriver_schema),
    SECTIONS("file", C(health.file), C(health.nfile), filecheck_schema, .env = "FILECHECKERS"),
    SECTIONS("http", C(health.http), C(health.nhttp), httpcheck_schema, .env = "HTTPCHECKERS"),
    SECTIONS("tcp", C(health.tcp), C(health.ntcp), tcpcheck_schema, .env = "TCPCHECKERS"),
};
SCHEMA(health_schema, health_fields, 0, 0, NULL, NULL);

/* catalog, tags, proxy, compatibility, validation, policy */
static const struct field catalog_fields[] = {
    INT("maxentries", C(catalog.maxentries), INT_MIN, INT_MAX, .def = "1000", .flags = F_ZERODEF),
};
SCHEMA(catalog_schema, catalog_fields, 0, 0, NULL, NULL);
static const struct field tags_fields[] = {
    INT("maxtags", C(tags.maxtags), 0, INT_MAX, .def = "1000", .flags = F_ZERODEF),
};
SCHEMA(tags_schema, tags_fields, 0, 0, NULL, NULL);
#define PR(m) offsetof(struct config_proxy_remote, m)
static const struct field remote_fields[] = {
    STR("host", PR(host), .hint = "a registry host like \"ghcr.io\""),
    STR("remoteurl", PR(remoteurl), .hint = "a URL like \"https://ghcr.io\""),
    STR("username", PR(username)),
    STR("password", PR(password), .flags = F_SECRET),
};
SCHEMA(remote_schema, remote_fields, sizeof(struct config_proxy_remote), 0, NULL, NULL);
static const struct field proxy_fields[] = {
    STR("remoteurl", C(proxy.remoteurl), .hint = "a URL like \"https://registry-1.docker.io\""),
    STR("username", C(proxy.username)),
    STR("password", C(proxy.password), .flags = F_SECRET),
    DUR("ttl", C(proxy.ttl_ms), .def = "168h", .hint = "168h"),
    DUR("cachewritetimeout", C(proxy.cachewritetimeout_ms), .def = "5m", .flags = F_ZERODEF,
        .hint = "5m"),
    DUR("tagfreshness", C(proxy.tagfreshness_ms), .hint = "30s"),
    I64("maxsize", C(proxy.maxsize), 0, LLONG_MAX, .flags = F_BYTES, .hint = "10GB"),
    STR("spooldir", C(proxy.spooldir), .def = "/var/tmp/regmirror-spool", .flags = F_ZERODEF),
    BOOL("push", C(proxy.push)),
    LIST("pushusers", C(proxy.pushusers), C(proxy.npushusers)),
    BOOL("shadow", C(proxy.shadow)),
    INT("maxfetches", C(proxy.maxfetches), 1, 100000, .def = "64"),
    DUR("fetchqueuetimeout", C(proxy.fetchqueuetimeout_ms), .def = "60s", .flags = F_ZERODEF,
        .hint = "60s"),
    SECTIONS("remotes", C(proxy.remotes), C(proxy.nremotes), remote_schema),
};
SCHEMA(proxy_schema, proxy_fields, 0, 0, on_proxy, NULL);
static const struct field schema1_fields[] = {
    STR("signingkeyfile", C(compatibility.schema1.signingkeyfile), .env = "TRUSTKEY"),
    BOOL("enabled", C(compatibility.schema1.enabled)),
};
SCHEMA(schema1_schema, schema1_fields, 0, 0, on_schema1, NULL);
static const struct field compatibility_fields[] = {SECTION("schema1", schema1_schema)};
SCHEMA(compatibility_schema, compatibility_fields, 0, 0, NULL, NULL);
static const struct field urls_fields[] = {
    LIST("allow", C(validation.urls.allow), C(validation.urls.nallow)),
    LIST("deny", C(validation.urls.deny), C(validation.urls.ndeny)),
};
SCHEMA(urls_schema, urls_fields, 0, 0, NULL, NULL);
#define P(m) offsetof(struct config_platform, m)
static const struct field platform_fields[] = {
    STR("architecture", P(architecture)),
    STR("os", P(os)),
};
#undef P
SCHEMA(platform_schema, platform_fields, sizeof(struct config_platform), 0, NULL, NULL);
static const struct field indexes_fields[] = {
    ENUM("platforms", C(validation.indexes.platforms), platforms, .def = "all"),
    SECTIONS("platformlist", C(validation.indexes.platformlist),
             C(validation.indexes.nplatformlist), platform_schema),
};
SCHEMA(indexes_schema, indexes_fields, 0, 0, NULL, NULL);
static const struct field manifests_fields[] = {
    SECTION("urls", urls_schema, .env = "URLS"),
    SECTION("indexes", indexes_schema),
};
SCHEMA(manifests_schema, manifests_fields, 0, 0, NULL, NULL);
static const struct field validation_fields[] = {
    /* enabled = validation.enabled || !validation.disabled, as the reference computes it */
    BOOL("disabled", C(validation.enabled), .flags = F_NEGATE, .def = "false"),
    BOOL("enabled", C(validation.enabled), .flags = F_ONLYTRUE | F_ALIAS),
    SECTION("manifests", manifests_schema),
};
SCHEMA(validation_schema, validation_fields, 0, 0, NULL, NULL);
static const struct field repository_fields[] = {
    LIST("classes", C(policy_repository.classes), C(policy_repository.nclasses)),
};
SCHEMA(repository_schema, repository_fields, 0, 0, NULL, NULL);
static const struct field policy_fields[] = {SECTION("repository", repository_schema)};
SCHEMA(policy_schema, policy_fields, 0, 0, NULL, NULL);

static const struct field root_fields[] = {
    STR("version", C(version), .flags = F_VERBATIM),
    /* the deprecated spelling first, so that log.level wins when both are given */
    ENUM("loglevel", C(log.level), log_levels, .flags = F_ALIAS),
    SECTION("log", log_schema),
    SECTION("storage", storage_schema, .flags = F_SELECTOR),
    SECTION("auth", auth_schema, .flags = F_SELECTOR),
    SECTION("middleware", middlewares_schema),
    SECTION("reporting", reporting_schema),
    SECTION("http", http_schema),
    SECTION("notifications", notifications_schema),
    SECTION("redis", redis_schema),
    SECTION("health", health_schema),
    SECTION("catalog", catalog_schema),
    SECTION("tags", tags_schema),
    SECTION("proxy", proxy_schema),
    SECTION("compatibility", compatibility_schema),
    SECTION("validation", validation_schema),
    SECTION("policy", policy_schema),
};
SCHEMA(root_schema, root_fields, 0, 0, NULL, NULL);

static const struct field *find_field(const struct schema *s, const char *key)
{
    for (size_t i = 0; i < s->nfields; i++) {
        if (!strcmp(s->fields[i].key, key))
            return &s->fields[i];
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                    */

static void free_strlist(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

static void free_headers(struct config_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        free_strlist(h[i].values, h[i].nvalues);
    }
    free(h);
}

static void free_kv(struct config_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

static void free_struct(const struct schema *s, void *base)
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
            free_strlist(*AT(base, f->off, char **), *AT(base, f->noff, size_t));
            *AT(base, f->off, char **) = NULL;
            *AT(base, f->noff, size_t) = 0;
            break;
        case T_HEADERS:
            free_headers(*AT(base, f->off, struct config_header *), *AT(base, f->noff, size_t));
            *AT(base, f->off, struct config_header *) = NULL;
            *AT(base, f->noff, size_t) = 0;
            break;
        case T_KV:
            free_kv(*AT(base, f->off, struct config_kv *), *AT(base, f->noff, size_t));
            *AT(base, f->off, struct config_kv *) = NULL;
            *AT(base, f->noff, size_t) = 0;
            break;
        case T_STRUCT:
            free_struct(f->sub, base);
            break;
        case T_LIST: {
            const struct schema *sub = f->sub;
            char *arr = *AT(base, f->off, char *);
            size_t n = *AT(base, f->noff, size_t);
            for (size_t j = 0; j < n; j++)
                free_struct(sub, arr + j * sub->size);
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

static void set_string(struct ctx *c, char **slot, const char *value)
{
    char *s = strdup(value);

    if (!s) {
        oom(c);
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
    ERR(c, n, "%s: expected %s, got %s", path, form, describe(n, got, sizeof(got)));
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
        oom(c);
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
            oom(c);
            break;
        }
    }
    if (i < n->n) {
        free_strlist(list, i + 1);
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
        oom(c);
        return;
    }
    for (i = 0; i < n->n; i++) {
        char sub[PATH_LEN];
        join(sub, path, n->keys[i]);
        h[i].name = strdup(n->keys[i]);
        if (!h[i].name) {
            oom(c);
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

/* Flattens a free-form value into "a.b" / "list.0" keys. */
static void flatten(struct ctx *c, const struct node *n, const char *prefix, const char *path,
                    struct config_kv **kv, size_t *nkv)
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
            flatten(c, n->items[i], key, path, kv, nkv);
        }
        return;
    }
    if (*nkv >= MAX_ITEMS) {
        if (*nkv == MAX_ITEMS)
            ERR(c, n, "%s: more than %d values", path, MAX_ITEMS);
        return;
    }
    grown = realloc(*kv, (*nkv + 1) * sizeof(*grown));
    if (!grown) {
        oom(c);
        return;
    }
    *kv = grown;
    grown[*nkv].key = strdup(prefix);
    grown[*nkv].value = strdup(n->text ? n->text : "");
    if (!grown[*nkv].key || !grown[*nkv].value) {
        free(grown[*nkv].key);
        free(grown[*nkv].value);
        oom(c);
        return;
    }
    (*nkv)++;
}

static void decode_kv(struct ctx *c, const struct field *f, const struct node *n, const char *path,
                      void *base)
{
    struct config_kv *kv = NULL;
    size_t nkv = 0;

    if (n->kind != NODE_MAP) {
        type_error(c, f, n, path);
        return;
    }
    flatten(c, n, "", path, &kv, &nkv);
    free_kv(*AT(base, f->off, struct config_kv *), *AT(base, f->noff, size_t));
    *AT(base, f->off, struct config_kv *) = kv;
    *AT(base, f->noff, size_t) = nkv;
}

static void apply_defaults(struct ctx *c, const struct schema *s, void *base);
static void decode_struct(struct ctx *c, const struct schema *s, const struct node *n,
                          const char *path, void *base);
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
        oom(c);
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        char sub_path[PATH_LEN];
        snprintf(sub_path, sizeof(sub_path), "%s[%zu]", path, i);
        apply_defaults(c, sub, arr + i * sub->size);
        if (n->items[i]->kind == NODE_NULL)
            continue;
        decode_struct(c, sub, n->items[i], sub_path, arr + i * sub->size);
    }
    {
        char *old = *AT(base, f->off, char *);
        size_t nold = *AT(base, f->noff, size_t);
        for (size_t j = 0; j < nold; j++)
            free_struct(sub, old + j * sub->size);
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

    bool ok = parse_ll(n->text, &v) || ((f->flags & F_BYTES) && parse_bytes(n->text, &v));
    if (!ok || (v < f->min && !(f->flags & F_CLAMP)) || v > f->max) {
        expected_form(f, form, sizeof(form));
        ERR(c, n, "%s: expected %s, got %s", path, form, describe(n, got, sizeof(got)));
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

    if (parse_ll(n->text, &bare)) {
        /* the reference reads a number without a unit as nanoseconds */
        ns = (long double)bare;
        if (bare > 0)
            WARN(c, n, "%s: %lld has no unit and is read as nanoseconds; write e.g. \"%llds\"",
                 path, bare, bare);
    } else if (!parse_go_duration(n->text, &ns)) {
        ERR(c, n, "%s: expected a duration like \"%s\", got %s", path, f->hint ? f->hint : "10s",
            describe(n, got, sizeof(got)));
        return;
    }
    if (ns < 0) {
        ERR(c, n, "%s: expected a duration that is not negative, got %s", path,
            describe(n, got, sizeof(got)));
        return;
    }
    if ((f->flags & F_ZERODEF) && ns == 0 && !is_default) {
        decode_default(c, f, path, base);
        return;
    }
    /* rounded up: a short non-zero timeout must not become "none" */
    *AT(base, f->off, int64_t) = (int64_t)((ns + 999999) / 1000000);
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
            set_string(c, AT(base, f->off, char *), f->def);
            return;
        }
        set_string(c, AT(base, f->off, char *), n->text);
        break;
    case T_BOOL: {
        bool v;
        char got[128];
        if (!parse_bool(n->text, &v)) {
            ERR(c, n, "%s: expected true or false, got %s", path, describe(n, got, sizeof(got)));
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
    case T_ENUM:
        decode_enum(c, f, n, path, base);
        break;
    case T_STRLIST: {
        char **list;
        size_t count;
        if (decode_strings(c, f, n, path, &list, &count) < 0)
            return;
        free_strlist(*AT(base, f->off, char **), *AT(base, f->noff, size_t));
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
        decode_struct(c, f->sub, n, path, base);
        break;
    case T_LIST:
        decode_list(c, f, n, path, base);
        break;
    }
}

/* Sets every field to its default; strings to "" when they have none. */
static void apply_defaults(struct ctx *c, const struct schema *s, void *base)
{
    for (size_t i = 0; i < s->nfields; i++) {
        const struct field *f = &s->fields[i];

        if (f->type == T_STRUCT)
            apply_defaults(c, f->sub, base);
        else if (f->type == T_STR && !(f->flags & F_ALIAS))
            set_string(c, AT(base, f->off, char *), f->def ? f->def : "");
        else
            decode_default(c, f, f->key, base);
    }
}

static void decode_struct(struct ctx *c, const struct schema *s, const struct node *n,
                          const char *path, void *base)
{
    if (n->kind == NODE_NULL)
        return;
    if (n->kind != NODE_MAP) {
        char got[128];
        ERR(c, n, "%s: expected a mapping, got %s", path[0] ? path : c->name,
            describe(n, got, sizeof(got)));
        return;
    }
    for (size_t i = 0; i < s->nfields; i++) {
        const struct field *f = &s->fields[i];
        const struct node *v = map_get(n, f->key);
        char sub[PATH_LEN];

        if (!v)
            continue;
        join(sub, path, f->key);
        decode_value(c, f, v, sub, base, false);
    }
    if (s->flags & S_OPEN)
        return;
    for (size_t i = 0; i < n->n; i++) {
        char sub[PATH_LEN];
        const char *near = NULL;

        if (find_field(s, n->keys[i]))
            continue;
        for (size_t j = 0; j < s->nfields; j++) {
            if (!strcasecmp(s->fields[j].key, n->keys[i]))
                near = s->fields[j].key;
        }
        join(sub, path, n->keys[i]);
        if (near)
            WARN(c, n->items[i], "unknown key %s (did you mean %s?)", sub, near);
        else
            WARN(c, n->items[i], "unknown key %s", sub);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Environment                                                                                 */

static bool upper_eq(const char *key, const char *part)
{
    for (; *key && *part; key++, part++) {
        if (toupper((unsigned char)*key) != *part)
            return false;
    }
    return !*key && !*part;
}

static const struct field *find_env_field(const struct schema *s, const char *part)
{
    for (size_t i = 0; i < s->nfields; i++) {
        const struct field *f = &s->fields[i];
        if (upper_eq(f->key, part) || (f->env && !strcmp(f->env, part)))
            return f;
    }
    return NULL;
}

/* The value under key, made a container of the given kind (replacing anything else). */
static struct node *ensure_container(struct ctx *c, struct node *m, const char *key,
                                     enum node_kind kind, const char *var)
{
    struct node *v = map_get(m, key);

    if (v && v->kind == kind)
        return v;
    v = node_new(c, kind, 0, var);
    if (!v) {
        ERR(c, NULL, "%s: the configuration is too large", var);
        return NULL;
    }
    if (map_set(c, m, key, v) < 0)
        return NULL;
    return v;
}

static bool parse_index(const char *part, size_t *out)
{
    long long v;

    if (!isdigit((unsigned char)part[0]) || !parse_ll(part, &v) || v > MAX_ITEMS)
        return false;
    *out = (size_t)v;
    return true;
}

static void env_apply(struct ctx *c, const struct schema *s, bool maplike, struct node *n,
                      char **parts, size_t nparts, struct node *payload, const char *var);

/* Selects a list element by index; one past the end appends. Takes payload. */
static void env_index(struct ctx *c, const struct schema *elem, bool maplike, struct node *seq,
                      char **parts, size_t nparts, struct node *payload, const char *var)
{
    size_t idx;
    struct node *e;

    if (!parse_index(parts[0], &idx)) {
        ERR(c, NULL, "%s: expected a list index, got \"%s\"", var, parts[0]);
        node_free(payload);
        return;
    }
    if (idx > seq->n) {
        ERR(c, NULL, "%s: index %zu is past the end of a list of %zu", var, idx, seq->n);
        node_free(payload);
        return;
    }
    if (nparts == 1) {
        if (idx < seq->n) {
            node_free(seq->items[idx]);
            seq->items[idx] = payload;
        } else if (node_push(seq, NULL, payload) < 0) {
            ERR(c, NULL, "%s: the list is too long", var);
            node_free(payload);
        }
        return;
    }
    if (idx == seq->n) {
        e = node_new(c, NODE_MAP, 0, var);
        if (!e || node_push(seq, NULL, e) < 0) {
            node_free(e);
            ERR(c, NULL, "%s: the list is too long", var);
            node_free(payload);
            return;
        }
    }
    e = seq->items[idx];
    if (e->kind != NODE_MAP && e->kind != NODE_SEQ) {
        struct node *m = node_new(c, NODE_MAP, 0, var);
        if (!m) {
            ERR(c, NULL, "%s: the configuration is too large", var);
            node_free(payload);
            return;
        }
        node_free(e);
        seq->items[idx] = e = m;
    }
    env_apply(c, elem, maplike, e, parts + 1, nparts - 1, payload, var);
}

/* A free-form mapping: keys match without regard to case, new keys are lower case. */
static void env_generic(struct ctx *c, struct node *m, char **parts, size_t nparts,
                        struct node *payload, const char *var)
{
    struct node *child = NULL;
    size_t i;

    for (i = 0; i < m->n; i++) {
        if (!strcasecmp(m->keys[i], parts[0]))
            break;
    }
    if (i == m->n) {
        for (char *p = parts[0]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (nparts == 1) {
            map_set(c, m, parts[0], payload);
            return;
        }
        child = ensure_container(c, m, parts[0], NODE_MAP, var);
    } else if (nparts == 1) {
        node_free(m->items[i]);
        m->items[i] = payload;
        return;
    } else {
        child = m->items[i];
        if (child->kind != NODE_MAP && child->kind != NODE_SEQ)
            child = ensure_container(c, m, m->keys[i], NODE_MAP, var);
    }
    if (!child) {
        node_free(payload);
        return;
    }
    env_apply(c, NULL, true, child, parts + 1, nparts - 1, payload, var);
}

/* REGISTRY_STORAGE=<driver> / REGISTRY_AUTH=<type>: the named section alone, empty. */
static void env_select(struct ctx *c, struct node *m, const struct field *f, struct node *payload,
                       const char *var)
{
    struct node *old = map_get(m, f->key);
    struct node *sel;
    struct node *empty;
    char *name;

    if (payload->kind != NODE_SCALAR) {
        map_set(c, m, f->key, payload);
        return;
    }
    if (strlen(payload->text) > MAX_KEY) {
        ERR(c, payload, "%s: longer than %d bytes", f->key, MAX_KEY);
        node_free(payload);
        return;
    }
    sel = node_new(c, NODE_MAP, 0, var);
    empty = node_new(c, NODE_NULL, 0, var);
    name = strdup(payload->text);
    if (!sel || !empty || !name)
        goto fail;
    /* storage keeps its parameter sections (delete, cache, ...): only the driver changes */
    if (f->sub == &storage_schema && old && old->kind == NODE_MAP) {
        for (size_t i = 0; i < old->n; i++) {
            if (!storage_param_section(old->keys[i]))
                continue;
            if (node_push(sel, old->keys[i], old->items[i]) < 0)
                goto fail;
            old->keys[i] = NULL;
            old->items[i] = NULL;
        }
    }
    if (map_index(sel, name) < 0) {
        if (node_push(sel, name, empty) < 0)
            goto fail;
        name = NULL;
        empty = NULL;
    }
    free(name);
    node_free(empty);
    node_free(payload);
    map_set(c, m, f->key, sel);
    return;
fail:
    ERR(c, NULL, "%s: out of memory", var);
    free(name);
    node_free(empty);
    node_free(sel);
    node_free(payload);
}

/*
 * Applies one variable below n: s is the section n holds (NULL for free-form content), parts the
 * rest of the name. Takes payload.
 */
static void env_apply(struct ctx *c, const struct schema *s, bool maplike, struct node *n,
                      char **parts, size_t nparts, struct node *payload, const char *var)
{
    const struct field *f;
    struct node *child;

    if (n->kind == NODE_SEQ) {
        env_index(c, NULL, maplike, n, parts, nparts, payload, var);
        return;
    }
    if (s)
        maplike = maplike || (s->flags & S_MAPLIKE);
    f = s ? find_env_field(s, parts[0]) : NULL;
    if (!f) {
        if (maplike) {
            env_generic(c, n, parts, nparts, payload, var);
            return;
        }
        WARN(c, NULL, "%s names no configuration key and is ignored", var);
        node_free(payload);
        return;
    }
    if (nparts == 1) {
        if (f->flags & F_SELECTOR)
            env_select(c, n, f, payload, var);
        else
            map_set(c, n, f->key, payload);
        return;
    }
    switch (f->type) {
    case T_STRUCT:
        child = ensure_container(c, n, f->key, NODE_MAP, var);
        if (child)
            env_apply(c, f->sub, maplike, child, parts + 1, nparts - 1, payload, var);
        else
            node_free(payload);
        break;
    case T_LIST:
    case T_STRLIST:
        child = ensure_container(c, n, f->key, NODE_SEQ, var);
        if (child)
            env_index(c, f->type == T_LIST ? f->sub : NULL, maplike, child, parts + 1, nparts - 1,
                      payload, var);
        else
            node_free(payload);
        break;
    case T_KV:
    case T_HEADERS:
        child = ensure_container(c, n, f->key, NODE_MAP, var);
        if (child)
            env_generic(c, child, parts + 1, nparts - 1, payload, var);
        else
            node_free(payload);
        break;
    default:
        WARN(c, NULL, "%s: %s takes a single value; the variable is ignored", var, f->key);
        node_free(payload);
        break;
    }
}

static int envvar_cmp(const void *a, const void *b)
{
    return strcmp(((const struct envvar *)a)->name, ((const struct envvar *)b)->name);
}

/* "storage: inmemory" is "storage: {inmemory: {}}", as the reference reads it. */
static void normalize_selector(struct ctx *c, struct node *root, const char *key)
{
    struct node *v = map_get(root, key);
    struct node *m, *empty;
    char *name;

    if (!v || v->kind != NODE_SCALAR)
        return;
    if (strlen(v->text) > MAX_KEY) {
        ERR(c, v, "%s: longer than %d bytes", key, MAX_KEY);
        return;
    }
    m = node_new(c, NODE_MAP, v->line, v->env);
    empty = node_new(c, NODE_NULL, v->line, v->env);
    name = strdup(v->text);
    if (!m || !empty || !name || node_push(m, name, empty) < 0) {
        node_free(m);
        node_free(empty);
        free(name);
        oom(c);
        return;
    }
    map_set(c, root, key, m);
}

/* Applies the REGISTRY_* variables of envp to the tree, in byte order of their names. */
static void apply_env(struct ctx *c, struct node **root, char *const *envp)
{
    static const char prefix[] = "REGISTRY_";
    size_t n = 0;

    for (char *const *e = envp; *e; e++) {
        if (!strncmp(*e, prefix, sizeof(prefix) - 1) && strchr(*e, '='))
            n++;
    }
    if (!n)
        return;
    if (n > MAX_ITEMS) {
        ERR(c, NULL, "more than %d REGISTRY_* variables", MAX_ITEMS);
        return;
    }
    c->envs = calloc(n, sizeof(*c->envs));
    if (!c->envs) {
        oom(c);
        return;
    }
    for (char *const *e = envp; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, prefix, sizeof(prefix) - 1) || !eq)
            continue;
        if (!utf8_valid(*e)) {
            ERR(c, NULL, "%.*s: not valid UTF-8", (int)(eq - *e), *e);
            continue;
        }
        c->envs[c->nenvs].name = strndup(*e, (size_t)(eq - *e));
        c->envs[c->nenvs].value = strdup(eq + 1);
        if (!c->envs[c->nenvs].name || !c->envs[c->nenvs].value) {
            free(c->envs[c->nenvs].name);
            free(c->envs[c->nenvs].value);
            oom(c);
            return;
        }
        c->nenvs++;
    }
    qsort(c->envs, c->nenvs, sizeof(*c->envs), envvar_cmp);

    if ((*root)->kind == NODE_NULL) {
        struct node *m = node_new(c, NODE_MAP, 0, NULL);
        if (!m) {
            oom(c);
            return;
        }
        node_free(*root);
        *root = m;
    }
    if ((*root)->kind != NODE_MAP)
        return; /* reported by the decoder */

    for (size_t i = 0; i < c->nenvs; i++) {
        const char *var = c->envs[i].name;
        const char *value = c->envs[i].value;
        char *copy = NULL, *parts[MAX_ENV_PARTS];
        size_t nparts = 0;
        bool too_long = false;
        struct node *payload;
        char *error = NULL;

        if (!strcmp(var, "REGISTRY_VERSION")) {
            WARN(c, NULL, "REGISTRY_VERSION is ignored: the version comes from the file");
            continue;
        }
        for (const char *p = var; *p; p++)
            nparts += *p == '_';
        if (nparts > MAX_ENV_PARTS) {
            WARN(c, NULL, "%s has more than %d parts and is ignored", var, MAX_ENV_PARTS);
            continue;
        }
        copy = strdup(var + sizeof(prefix) - 1);
        if (!copy) {
            oom(c);
            return;
        }
        nparts = 0;
        for (char *p = copy; p; nparts++) {
            parts[nparts] = p;
            p = strchr(p, '_');
            if (p)
                *p++ = '\0';
            if (strlen(parts[nparts]) > MAX_KEY)
                too_long = true;
        }
        if (too_long) {
            WARN(c, NULL, "%s names no configuration key and is ignored", var);
            free(copy);
            continue;
        }
        payload = parse_yaml(c, value, strlen(value), var, &error);
        if (!payload) {
            /* not YAML: the reference would refuse to start; take the text as it is */
            free(error);
            payload = node_new(c, NODE_SCALAR, 0, var);
            if (payload)
                payload->text = strdup(value);
            if (!payload || !payload->text) {
                node_free(payload);
                free(copy);
                oom(c);
                return;
            }
            payload->quoted = true;
        }
        node_mark_env(payload, var);
        env_apply(c, &root_schema, false, *root, parts, nparts, payload, var);
        free(copy);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Checks across keys                                                                          */

static bool has_port(const char *s, bool port_required)
{
    const char *colon;
    long long port;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return false;
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return !port_required;
        if (memchr(s, ':', (size_t)(colon - s)))
            return false; /* IPv6 without brackets */
    }
    for (const char *p = s; p < colon; p++) {
        if (isspace((unsigned char)*p) || *p == '/')
            return false;
    }
    return parse_ll(colon + 1, &port) && isdigit((unsigned char)colon[1]) && port >= 0 &&
           port <= 65535;
}

static bool is_http_url(const char *s)
{
    return (!strncasecmp(s, "http://", 7) && s[7]) || (!strncasecmp(s, "https://", 8) && s[8]);
}

static void check_one_of(struct ctx *c, struct node *root, const char *path, const char *value,
                         const char *const *allowed)
{
    char list[512], got[128];
    size_t o = 0;

    if (!value[0])
        return;
    for (const char *const *a = allowed; *a; a++) {
        if (!strcmp(*a, value))
            return;
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", a == allowed ? "" : ", ", *a);
        if (o >= sizeof(list))
            break;
    }
    ERR(c, tree_at(root, path), "%s: expected one of %s, got %s", path, list,
        quote_msg(value, got, sizeof(got)));
}

static const char *const cipher_suites[] = {
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    NULL,
};

static void finish_http(struct ctx *c, struct node *root, struct config *cfg)
{
    static const char *const nets[] = {"tcp", "unix", NULL};
    static const char *const tls_versions[] = {"tls1.0", "tls1.1", "tls1.2", "tls1.3", NULL};
    static const char *const client_auths[] = {"request-client-cert", "require-any-client-cert",
                                               "verify-client-cert-if-given",
                                               "require-and-verify-client-cert", NULL};
    struct node *addr = tree_at(root, "http.addr");
    char got[128];

    check_one_of(c, root, "http.net", cfg->http.net, nets);
    if (!strcmp(cfg->http.net, "unix")) {
        if (!addr || !cfg->http.addr[0])
            ERR(c, addr, "http.addr: expected a socket path when http.net is unix");
    } else if (!has_port(cfg->http.addr, true)) {
        ERR(c, addr, "http.addr: expected a string like \":5000\" or \"host:port\", got %s",
            quote_msg(cfg->http.addr, got, sizeof(got)));
    }
    if (cfg->http.prefix[0] && cfg->http.prefix[0] != '/')
        ERR(c, tree_at(root, "http.prefix"),
            "http.prefix: expected a path like \"/registry/\", got %s",
            quote_msg(cfg->http.prefix, got, sizeof(got)));
    if (cfg->http.host[0] && !is_http_url(cfg->http.host))
        WARN(c, tree_at(root, "http.host"),
             "http.host: %s is not a URL like \"https://registry.example.com\"; generated URLs "
             "will not work",
             quote_msg(cfg->http.host, got, sizeof(got)));
    if (cfg->http.debug.addr[0] && !has_port(cfg->http.debug.addr, true))
        ERR(c, tree_at(root, "http.debug.addr"),
            "http.debug.addr: expected a string like \"localhost:5001\", got %s",
            quote_msg(cfg->http.debug.addr, got, sizeof(got)));
    if (cfg->http.tls.certificate[0] && !cfg->http.tls.key[0])
        ERR(c, tree_at(root, "http.tls"),
            "http.tls.key: required when http.tls.certificate is set");
    if (cfg->http.tls.key[0] && !cfg->http.tls.certificate[0])
        ERR(c, tree_at(root, "http.tls"),
            "http.tls.certificate: required when http.tls.key is set");
    check_one_of(c, root, "http.tls.minimumtls", cfg->http.tls.minimumtls, tls_versions);
    check_one_of(c, root, "http.tls.clientauth", cfg->http.tls.clientauth, client_auths);
    for (size_t i = 0; i < cfg->http.tls.nciphersuites; i++) {
        const char *cs = cfg->http.tls.ciphersuites[i];
        const char *const *k;
        for (k = cipher_suites; *k && strcmp(*k, cs); k++)
            ;
        if (!*k)
            ERR(c, tree_at(root, "http.tls.ciphersuites"),
                "http.tls.ciphersuites[%zu]: unknown cipher suite %s", i,
                quote_msg(cs, got, sizeof(got)));
    }
}

static void finish_storage(struct ctx *c, struct node *root, struct config *cfg)
{
    static const struct {
        const char *name;
        enum config_storage_driver driver;
    } drivers[] = {{"filesystem", CONFIG_STORAGE_FILESYSTEM},
                   {"inmemory", CONFIG_STORAGE_INMEMORY},
                   {"oss", CONFIG_STORAGE_OSS},
                   {"s3", CONFIG_STORAGE_S3},
                   {"azure", CONFIG_STORAGE_OTHER},
                   {"gcs", CONFIG_STORAGE_OTHER},
                   {"swift", CONFIG_STORAGE_OTHER}};
    struct node *st = tree_at(root, "storage");
    const char *found[2] = {NULL, NULL};
    size_t nfound = 0, i;
    struct node *params;

    if (!st || st->kind == NODE_NULL) {
        ERR(c, st,
            "storage: no storage configuration provided; expected one driver section "
            "such as filesystem, inmemory, oss or s3");
        return;
    }
    if (st->kind != NODE_MAP)
        return; /* reported by the decoder */
    for (i = 0; i < st->n; i++) {
        if (storage_param_section(st->keys[i]))
            continue;
        if (nfound < 2)
            found[nfound] = st->keys[i];
        nfound++;
    }
    if (nfound == 0) {
        ERR(c, st,
            "storage: no storage driver configured; expected one driver section such as "
            "filesystem, inmemory, oss or s3");
        return;
    }
    if (nfound > 1) {
        ERR(c, st, "storage: exactly one storage driver is allowed, found %s and %s%s", found[0],
            found[1], nfound > 2 ? " and more" : "");
        return;
    }
    set_string(c, &cfg->storage.driver_name, found[0]);
    params = map_get(st, found[0]);
    for (i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++) {
        if (!strcmp(drivers[i].name, found[0]))
            break;
    }
    if (i == sizeof(drivers) / sizeof(drivers[0])) {
        WARN(c, params, "storage.%s: unknown storage driver", found[0]);
        cfg->storage.driver = CONFIG_STORAGE_OTHER;
    } else {
        cfg->storage.driver = drivers[i].driver;
    }
    if (cfg->storage.driver == CONFIG_STORAGE_OTHER) {
        char path[PATH_LEN], got[128];
        join(path, "storage", found[0]);
        if (params->kind == NODE_MAP)
            flatten(c, params, "", path, &cfg->storage.params, &cfg->storage.nparams);
        else if (params->kind != NODE_NULL)
            ERR(c, params, "%s: expected a mapping of driver parameters, got %s", path,
                describe(params, got, sizeof(got)));
    }
}

static void finish_auth(struct ctx *c, struct node *root, struct config *cfg)
{
    static const struct {
        const char *name;
        enum config_auth type;
    } types[] = {{"silly", CONFIG_AUTH_SILLY},
                 {"token", CONFIG_AUTH_TOKEN},
                 {"htpasswd", CONFIG_AUTH_HTPASSWD},
                 {"none", CONFIG_AUTH_NONE}};
    struct node *a = tree_at(root, "auth");
    size_t i;

    cfg->auth.type = CONFIG_AUTH_NONE;
    if (!a || a->kind != NODE_MAP || a->n == 0)
        return;
    if (a->n > 1) {
        ERR(c, a, "auth: exactly one auth type is allowed, found %s and %s%s", a->keys[0],
            a->keys[1], a->n > 2 ? " and more" : "");
        return;
    }
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (!strcmp(types[i].name, a->keys[0]))
            break;
    }
    if (i == sizeof(types) / sizeof(types[0])) {
        ERR(c, a->items[0], "auth.%s: unknown auth type; expected silly, token, htpasswd or none",
            a->keys[0]);
        return;
    }
    cfg->auth.type = types[i].type;
    switch (cfg->auth.type) {
    case CONFIG_AUTH_SILLY:
        if (!cfg->auth.silly.realm[0])
            ERR(c, a->items[0], "auth.silly.realm: required");
        if (!cfg->auth.silly.service[0])
            ERR(c, a->items[0], "auth.silly.service: required");
        break;
    case CONFIG_AUTH_TOKEN:
        if (!cfg->auth.token.realm[0])
            ERR(c, a->items[0], "auth.token.realm: required");
        if (!cfg->auth.token.service[0])
            ERR(c, a->items[0], "auth.token.service: required");
        if (!cfg->auth.token.issuer[0])
            ERR(c, a->items[0], "auth.token.issuer: required");
        if (!cfg->auth.token.rootcertbundle[0] && !cfg->auth.token.jwks[0])
            ERR(c, a->items[0], "auth.token: rootcertbundle or jwks is required");
        break;
    case CONFIG_AUTH_HTPASSWD:
        if (!cfg->auth.htpasswd.realm[0])
            ERR(c, a->items[0], "auth.htpasswd.realm: required");
        if (!cfg->auth.htpasswd.path[0])
            ERR(c, a->items[0], "auth.htpasswd.path: required");
        break;
    default:
        break;
    }
}

static void finish_lists(struct ctx *c, struct node *root, struct config *cfg)
{
    struct node *eps = tree_at(root, "notifications.endpoints");
    struct node *checks;
    char got[128];

    for (size_t i = 0; i < cfg->notifications.nendpoints; i++) {
        const struct config_endpoint *e = &cfg->notifications.endpoints[i];
        const struct node *n = eps && eps->kind == NODE_SEQ && i < eps->n ? eps->items[i] : eps;
        if (!e->name[0])
            ERR(c, n, "notifications.endpoints[%zu].name: required", i);
        if (!is_http_url(e->url))
            ERR(c, n,
                "notifications.endpoints[%zu].url: expected a URL like "
                "\"https://listener.example.com/event\", got %s",
                i, quote_msg(e->url, got, sizeof(got)));
    }
    checks = tree_at(root, "health.http");
    for (size_t i = 0; i < cfg->health.nhttp; i++) {
        if (!is_http_url(cfg->health.http[i].uri))
            ERR(c, checks, "health.http[%zu].uri: expected a URL like \"http://host/path\", got %s",
                i, quote_msg(cfg->health.http[i].uri, got, sizeof(got)));
        if (cfg->health.http[i].statuscode < 100)
            ERR(c, checks, "health.http[%zu].statuscode: expected an HTTP status from 100 to 599",
                i);
    }
    checks = tree_at(root, "health.tcp");
    for (size_t i = 0; i < cfg->health.ntcp; i++) {
        if (!has_port(cfg->health.tcp[i].addr, true))
            ERR(c, checks, "health.tcp[%zu].addr: expected a string like \"host:port\", got %s", i,
                quote_msg(cfg->health.tcp[i].addr, got, sizeof(got)));
    }
    checks = tree_at(root, "health.file");
    for (size_t i = 0; i < cfg->health.nfile; i++) {
        if (!cfg->health.file[i].file[0])
            ERR(c, checks, "health.file[%zu].file: required", i);
    }
}

/* End of the bracket expression opening at p ('['), or NULL when it is not closed. */
static const char *bracket_end(const char *p)
{
    p++;
    if (*p == '^')
        p++;
    if (*p == ']')
        p++;
    for (; *p && *p != ']'; p++) {
        if (*p == '[' && (p[1] == ':' || p[1] == '=' || p[1] == '.')) {
            const char *close = strchr(p + 2, p[1]);
            while (close && close[1] != ']')
                close = strchr(close + 1, p[1]);
            if (!close)
                return NULL;
            p = close + 1;
        }
    }
    return *p ? p : NULL;
}

/* Parses "{m}", "{m,}" or "{m,n}" at p: the largest count it allows (m + 1 for "{m,}") and
 * its end, or -1 when it is no bound (regcomp then judges it). */
static long bound_times(const char *p, const char **end)
{
    char *q;
    if (!isdigit((unsigned char)p[1]))
        return -1;
    long m = strtol(p + 1, &q, 10), n = m;
    if (*q == ',') {
        n = isdigit((unsigned char)q[1]) ? strtol(q + 1, &q, 10) : m + 1;
        if (*q == ',')
            return -1;
    }
    if (*q != '}')
        return -1;
    *end = q;
    return m > n ? m : n;
}

#define REGEX_GROUPS_MAX 32
#define REGEX_REPEAT_MAX 1000 /* Go's limit on a repeat count */
#define REGEX_SIZE_MAX 20000  /* atoms once glibc has copied every repeated part */

/*
 * Why glibc's regcomp would build an outsized automaton from pat, or NULL. glibc copies a
 * repeated part once per count and accepts repeated operators ("a+++" doubles the tree per
 * '+'), so a one-line pattern could take gigabytes at start. Go's regexp, registry:2's,
 * refuses nested repetition and counts above 1000; the lazy "*?" it reads is the same
 * match set in POSIX, so one '?' after a repetition stays allowed.
 */
static const char *regex_hazard(const char *pat)
{
    size_t total[REGEX_GROUPS_MAX + 1] = {0}, last[REGEX_GROUPS_MAX + 1] = {0};
    int depth = 0;
    bool after_rep = false, lazy_ok = false;

    for (const char *p = pat; *p; p++) {
        size_t atom = 1;
        long times = -1;
        const char *end = p;
        switch (*p) {
        case '\\':
            if (p[1])
                p++;
            break;
        case '[':
            p = bracket_end(p);
            if (!p)
                return NULL;
            break;
        case '(':
            if (depth == REGEX_GROUPS_MAX)
                return "groups nested more than 32 deep";
            depth++;
            total[depth] = last[depth] = 0;
            after_rep = false;
            continue;
        case ')':
            if (depth > 0)
                atom = total[depth--];
            break;
        case '|':
            last[depth] = 0;
            after_rep = false;
            continue;
        case '*':
        case '?':
            times = 1;
            break;
        case '+':
            times = 2;
            break;
        case '{':
            times = bound_times(p, &end);
            if (times > REGEX_REPEAT_MAX)
                return "a repeat count above 1000 (Go refuses it)";
            break;
        default:
            break;
        }
        if (times >= 0) {
            if (after_rep) {
                if (*p == '?' && lazy_ok) {
                    lazy_ok = false;
                    continue;
                }
                return "a repetition of a repetition (Go refuses it; glibc copies the "
                       "pattern for each)";
            }
            total[depth] += last[depth] * (size_t)(times > 0 ? times : 1) - last[depth] + 1;
            last[depth] = 0;
            after_rep = lazy_ok = true;
            p = end;
        } else {
            total[depth] += atom;
            last[depth] = atom;
            after_rep = false;
        }
        if (total[depth] > REGEX_SIZE_MAX)
            return "repeats that expand to more than 20000 parts";
    }
    return NULL;
}

/* validation.manifests.urls patterns must compile as the registry compiles them. */
static void finish_validation(struct ctx *c, struct node *root, const struct config *cfg)
{
    static const char *const which[] = {"allow", "deny"};
    char *const *lists[] = {cfg->validation.urls.allow, cfg->validation.urls.deny};
    const size_t counts[] = {cfg->validation.urls.nallow, cfg->validation.urls.ndeny};
    char path[64], got[128], why[128];
    for (int w = 0; w < 2; w++) {
        for (size_t i = 0; i < counts[w]; i++) {
            regex_t re;
            const char *pat = lists[w][i];
            const char *hazard = regex_hazard(pat);
            /* Go syntax that POSIX reads as something else: \d is a plain "d" there */
            const char *go = strstr(pat, "\\d")   ? "\\d (use [0-9])"
                             : strstr(pat, "\\D") ? "\\D (use [^0-9])"
                             : strstr(pat, "\\A") ? "\\A (use ^)"
                             : strstr(pat, "\\z") ? "\\z (use $)"
                             : strstr(pat, "\\p") || strstr(pat, "\\P")
                                 ? "Unicode class \\p or \\P (use a bracket expression)"
                                 : NULL;
            int rc = hazard || go ? 0 : regcomp(&re, pat, REG_EXTENDED | REG_NOSUB);
            if (!hazard && !go && rc == 0) {
                regfree(&re);
                continue;
            }
            if (hazard)
                snprintf(why, sizeof(why), "%s", hazard);
            else if (go)
                snprintf(why, sizeof(why), "Go's %s has no POSIX meaning", go);
            else
                regerror(rc, &re, why, sizeof(why));
            snprintf(path, sizeof(path), "validation.manifests.urls.%s", which[w]);
            ERR(c, tree_at(root, path),
                "%s[%zu]: %s is not a POSIX extended regular expression: %s", path, i,
                quote_msg(lists[w][i], got, sizeof(got)), why);
        }
    }
}

static void finish(struct ctx *c, struct node *root, struct config *cfg)
{
    struct node *v = tree_at(root, "version");
    char got[128];

    if (!v || v->kind == NODE_NULL)
        ERR(c, v, "version: required; expected \"0.1\"");
    else if (v->kind != NODE_SCALAR || strcmp(v->text, "0.1"))
        ERR(c, v, "version: expected \"0.1\", got %s", describe(v, got, sizeof(got)));
    finish_storage(c, root, cfg);
    finish_auth(c, root, cfg);
    finish_http(c, root, cfg);
    finish_lists(c, root, cfg);
    finish_validation(c, root, cfg);
    if (!cfg->redis.addr[0] && cfg->redis.naddrs)
        set_string(c, &cfg->redis.addr, cfg->redis.addrs[0]);
    if (cfg->redis.addr[0] && !has_port(cfg->redis.addr, true))
        ERR(c, tree_at(root, "redis.addr"),
            "redis.addr: expected a string like \"localhost:6379\", got %s",
            quote_msg(cfg->redis.addr, got, sizeof(got)));
    if (cfg->storage.cache.blobdescriptor == CONFIG_CACHE_REDIS && !cfg->redis.addr[0])
        ERR(c, tree_at(root, "storage.cache.blobdescriptor"),
            "storage.cache.blobdescriptor: redis needs redis.addr");
    if (cfg->proxy.remoteurl[0] && !is_http_url(cfg->proxy.remoteurl))
        ERR(c, tree_at(root, "proxy.remoteurl"),
            "proxy.remoteurl: expected a URL like \"https://registry-1.docker.io\", got %s",
            quote_msg(cfg->proxy.remoteurl, got, sizeof(got)));
    /* Without client auth no request has a user: a list of pushers would refuse everyone. */
    if (cfg->proxy.npushusers && cfg->auth.type != CONFIG_AUTH_HTPASSWD)
        ERR(c, tree_at(root, "proxy.pushusers"),
            "proxy.pushusers: needs client auth (auth.htpasswd) to know who pushes");
    else if (cfg->proxy.npushusers && !cfg->proxy.push)
        WARN(c, tree_at(root, "proxy.pushusers"),
             "proxy.pushusers: has no effect without proxy.push: true");
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                     */

int config_load_string(const char *yaml, size_t len, const char *name, char *const *envp,
                       struct config *out, struct config_diag *diag)
{
    struct ctx c;
    struct config cfg;
    struct node *root = NULL;
    char *error = NULL;
    int result = -1;

    memset(diag, 0, sizeof(*diag));
    memset(&c, 0, sizeof(c));
    memset(&cfg, 0, sizeof(cfg));
    memset(out, 0, sizeof(*out));
    c.diag = diag;
    c.name = name ? name : "config";
    if (!yaml)
        len = 0;
    if (len > CONFIG_MAX_FILE) {
        ERR(&c, NULL, "%s: larger than %d bytes", c.name, CONFIG_MAX_FILE);
        goto out;
    }
    root = parse_yaml(&c, yaml ? yaml : "", len, NULL, &error);
    if (!root) {
        ERR(&c, NULL, "%s", error);
        goto out;
    }
    normalize_selector(&c, root, "storage");
    normalize_selector(&c, root, "auth");
    if (envp)
        apply_env(&c, &root, envp);
    apply_defaults(&c, &root_schema, &cfg);
    decode_struct(&c, &root_schema, root, "", &cfg);
    if (root->kind == NODE_MAP || root->kind == NODE_NULL)
        finish(&c, root, &cfg);
    if (c.failed)
        goto out;
    *out = cfg;
    memset(&cfg, 0, sizeof(cfg));
    result = 0;
out:
    config_free(&cfg);
    node_free(root);
    free(error);
    for (size_t i = 0; i < c.nenvs; i++) {
        free(c.envs[i].name);
        free(c.envs[i].value);
    }
    free(c.envs);
    return result;
}

int config_load_file(const char *path, char *const *envp, struct config *out,
                     struct config_diag *diag)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    int result = -1;

    memset(diag, 0, sizeof(*diag));
    memset(out, 0, sizeof(*out));
    if (!f) {
        char msg[PATH_LEN + 128];
        snprintf(msg, sizeof(msg), "%s: %s", path, strerror(errno));
        add_message(&diag->errors, &diag->nerrors, msg);
        return -1;
    }
    buf = malloc(CONFIG_MAX_FILE + 1);
    if (buf)
        len = fread(buf, 1, CONFIG_MAX_FILE + 1, f);
    if (!buf || ferror(f) || len > CONFIG_MAX_FILE) {
        char msg[PATH_LEN + 128];
        snprintf(msg, sizeof(msg), "%s: %s", path,
                 !buf        ? "out of memory"
                 : ferror(f) ? "read error"
                             : "larger than 1 MiB");
        add_message(&diag->errors, &diag->nerrors, msg);
        goto out;
    }
    result = config_load_string(buf, len, path, envp, out, diag);
out:
    free(buf);
    fclose(f);
    return result;
}

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    free_struct(&root_schema, cfg);
    free(cfg->storage.driver_name);
    free_kv(cfg->storage.params, cfg->storage.nparams);
    memset(cfg, 0, sizeof(*cfg));
}

void config_diag_free(struct config_diag *diag)
{
    if (!diag)
        return;
    free_strlist(diag->errors, diag->nerrors);
    free_strlist(diag->warnings, diag->nwarnings);
    memset(diag, 0, sizeof(*diag));
}

/* ------------------------------------------------------------------------------------------ */
/* Printing                                                                                    */

struct printer {
    FILE *f;
    bool dash; /* the next line starts a list element */
};

/* Key names whose values are credentials. */
static bool secret_name(const char *key)
{
    static const char *const exact[] = {"accountkey", "private_key",     "privatekey",
                                        "apikey",     "licensekey",      "sessiontoken",
                                        "token",      "authorization",   "proxy-authorization",
                                        "cookie",     "accesskeysecret", "secretkey",
                                        NULL};
    const char *last = strrchr(key, '.');

    last = last ? last + 1 : key;
    for (const char *const *e = exact; *e; e++) {
        if (!strcasecmp(last, *e))
            return true;
    }
    return strcasestr(last, "password") || strcasestr(last, "secret");
}

/* Whether s can be written as a plain YAML scalar and read back as the same string. */
static bool plain_ok(const char *s)
{
    long long ll;
    long double d;
    bool b;
    char *end;

    if (!s[0] || is_null_word(s) || parse_bool(s, &b) || parse_ll(s, &ll))
        return false;
    errno = 0;
    d = strtold(s, &end);
    (void)d;
    if (!*end)
        return false; /* a number: "0.1" must stay a string */
    if (strchr("-?:,[]{}#&*!|>'\"%@`~ ", s[0]))
        return false;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!isalnum(ch) && !strchr("._/-+=:@", ch))
            return false;
        if (ch == ':' && (p[1] == ' ' || !p[1]))
            return false;
    }
    return true;
}

/* Double-quoted when needed; characters YAML does not allow raw are escaped. */
static void put_scalar(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    if (plain_ok(s)) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    while (*p) {
        unsigned long cp;
        size_t n = utf8_next(p, &cp);

        if (!n) {
            fputs("\\ufffd", f); /* loaded text is UTF-8; this keeps the output YAML */
            p++;
            continue;
        }
        if (cp == '"' || cp == '\\')
            fprintf(f, "\\%c", (int)cp);
        else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
            fprintf(f, "\\x%02lx", cp);
        else if (cp == 0xfeff || cp == 0xfffe || cp == 0xffff || cp == 0x2028 || cp == 0x2029)
            fprintf(f, "\\u%04lx", cp);
        else
            fwrite(p, 1, n, f);
        p += n;
    }
    fputc('"', f);
}

/* Starts a line: indentation, or "- " when a list element begins. */
static void line_start(struct printer *p, int indent)
{
    if (p->dash) {
        fprintf(p->f, "%*s- ", indent - 2, "");
        p->dash = false;
    } else {
        fprintf(p->f, "%*s", indent, "");
    }
}

static void put_key(struct printer *p, int indent, const char *key)
{
    line_start(p, indent);
    put_scalar(p->f, key);
    fputc(':', p->f);
}

static void put_list(FILE *f, char *const *items, size_t n, bool masked)
{
    fputs(" [", f);
    for (size_t i = 0; i < n; i++) {
        if (i)
            fputs(", ", f);
        put_scalar(f, masked ? MASK : items[i]);
    }
    fputs("]\n", f);
}

static void print_struct(struct printer *p, const struct schema *s, const void *base, int indent);

static void print_kv(struct printer *p, const struct config_kv *kv, size_t n, int indent)
{
    for (size_t i = 0; i < n; i++) {
        put_key(p, indent, kv[i].key);
        fputc(' ', p->f);
        put_scalar(p->f, secret_name(kv[i].key) && kv[i].value[0] ? MASK : kv[i].value);
        fputc('\n', p->f);
    }
}

/* A section is printed only if something in it is: render it aside first. */
static void print_section(struct printer *p, const char *key, const struct schema *s,
                          const void *base, int indent)
{
    struct printer inner = {NULL, false};
    char *body = NULL;
    size_t len = 0;

    if (s->active && !s->active(base))
        return;
    inner.f = open_memstream(&body, &len);
    if (!inner.f)
        return;
    print_struct(&inner, s, base, indent + 2);
    fclose(inner.f);
    if (len || (s->flags & S_ALWAYS)) {
        put_key(p, indent, key);
        fputs(len ? "\n" : " {}\n", p->f);
        fputs(body, p->f);
    }
    free(body);
}

static void print_field(struct printer *p, const struct field *f, const void *base, int indent)
{
    char buf[64];

    switch (f->type) {
    case T_STR: {
        const char *v = *CAT(base, f->off, char *);
        if (!v || !v[0])
            return;
        put_key(p, indent, f->key);
        fputc(' ', p->f);
        if (f->flags & F_VERBATIM)
            fputs(v, p->f);
        else
            put_scalar(p->f, (f->flags & F_SECRET) || secret_name(f->key) ? MASK : v);
        fputc('\n', p->f);
        return;
    }
    case T_BOOL: {
        bool v = *CAT(base, f->off, bool);
        put_key(p, indent, f->key);
        fprintf(p->f, " %s\n", (f->flags & F_NEGATE ? !v : v) ? "true" : "false");
        return;
    }
    case T_INT:
        put_key(p, indent, f->key);
        fprintf(p->f, " %d\n", *CAT(base, f->off, int));
        return;
    case T_I64:
        put_key(p, indent, f->key);
        fprintf(p->f, " %lld\n", (long long)*CAT(base, f->off, int64_t));
        return;
    case T_DUR:
        format_duration(*CAT(base, f->off, int64_t), buf, sizeof(buf));
        put_key(p, indent, f->key);
        fprintf(p->f, " %s\n", buf);
        return;
    case T_ENUM: {
        int v = *CAT(base, f->off, int);
        int variant = (f->flags & F_VARIANT) ? *CAT(base, f->noff, bool) : 0;
        for (const struct enum_name *e = f->sub; e->name; e++) {
            if (e->value == v && e->variant == variant) {
                if (!e->name[0])
                    return;
                put_key(p, indent, f->key);
                fprintf(p->f, " %s\n", e->name);
                return;
            }
        }
        return;
    }
    case T_STRLIST: {
        size_t n = *CAT(base, f->noff, size_t);
        if (!n)
            return;
        put_key(p, indent, f->key);
        put_list(p->f, *CAT(base, f->off, char **), n, false);
        return;
    }
    case T_HEADERS: {
        const struct config_header *h = *CAT(base, f->off, struct config_header *);
        size_t n = *CAT(base, f->noff, size_t);
        if (!n)
            return;
        put_key(p, indent, f->key);
        fputc('\n', p->f);
        for (size_t i = 0; i < n; i++) {
            put_key(p, indent + 2, h[i].name);
            put_list(p->f, h[i].values, h[i].nvalues, secret_name(h[i].name));
        }
        return;
    }
    case T_KV: {
        size_t n = *CAT(base, f->noff, size_t);
        if (!n)
            return;
        put_key(p, indent, f->key);
        fputc('\n', p->f);
        print_kv(p, *CAT(base, f->off, struct config_kv *), n, indent + 2);
        return;
    }
    case T_STRUCT:
        print_section(p, f->key, f->sub, base, indent);
        return;
    case T_LIST: {
        const struct schema *sub = f->sub;
        const char *arr = *CAT(base, f->off, char *);
        size_t n = *CAT(base, f->noff, size_t);
        if (!n)
            return;
        put_key(p, indent, f->key);
        fputc('\n', p->f);
        for (size_t i = 0; i < n; i++) {
            p->dash = true;
            print_struct(p, sub, arr + i * sub->size, indent + 4);
            if (p->dash) {
                fprintf(p->f, "%*s- {}\n", indent + 2, "");
                p->dash = false;
            }
        }
        return;
    }
    }
}

static void print_struct(struct printer *p, const struct schema *s, const void *base, int indent)
{
    if (s->print_extra)
        s->print_extra(p, base, indent);
    for (size_t i = 0; i < s->nfields; i++) {
        if (!(s->fields[i].flags & F_ALIAS))
            print_field(p, &s->fields[i], base, indent);
    }
}

/* A driver with no table of its own: its name and the parameters as they were given. */
static void print_storage_params(struct printer *p, const void *base, int indent)
{
    const struct config *cfg = base;

    if (cfg->storage.driver != CONFIG_STORAGE_OTHER || !cfg->storage.driver_name)
        return;
    put_key(p, indent, cfg->storage.driver_name);
    if (!cfg->storage.nparams) {
        fputs(" {}\n", p->f);
        return;
    }
    fputc('\n', p->f);
    print_kv(p, cfg->storage.params, cfg->storage.nparams, indent + 2);
}

void config_print(const struct config *cfg, FILE *f)
{
    struct printer p = {f, false};

    if (!cfg->version)
        return;
    print_struct(&p, &root_schema, cfg, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Embedded default, the same text as conf/config.yml                                          */

static const char default_yaml[] =
    "# regmirror default configuration: the file format of the reference registry (registry:2).\n"
    "# Every key can be overridden from the environment, e.g. REGISTRY_HTTP_ADDR=:5001.\n"
    "version: 0.1\n"
    "log:\n"
    "  fields:\n"
    "    service: registry\n"
    "storage:\n"
    "  cache:\n"
    "    blobdescriptor: inmemory\n"
    "  filesystem:\n"
    "    rootdirectory: ./data\n"
    "  delete:\n"
    "    enabled: true\n"
    "http:\n"
    "  addr: :5000\n"
    "  headers:\n"
    "    X-Content-Type-Options: [nosniff]\n"
    "health:\n"
    "  storagedriver:\n"
    "    enabled: true\n"
    "    interval: 10s\n"
    "    threshold: 3\n";

const char *config_default_yaml(void)
{
    return default_yaml;
}
