/*
 * config_yaml: the generic tree (struct node) the configuration is read into, and the libyaml
 * event reader that builds it (anchors, aliases, merge keys, the limits on size and depth).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "buf.h"
#include "config_int.h"

/* ------------------------------------------------------------------------------------------ */
/* Tree operations                                                                             */

struct node *config_node_new(struct ctx *c, enum node_kind kind, unsigned line, const char *env)
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

void config_node_free(struct node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->keys)
            free(n->keys[i]);
        config_node_free(n->items[i]);
    }
    free(n->keys);
    free(n->items);
    free(n->text);
    free(n);
}

int config_node_push(struct node *n, char *key, struct node *v)
{
    bool map = n->kind == NODE_MAP;
    size_t cap = n->cap, kcap = n->cap;

    /* keys grows from the same cap as items, so both end at the same size */
    if (buf_grow_items(&n->items, &cap, n->n + 1, sizeof(*n->items), MAX_ITEMS) != BUF_OK)
        return -1;
    if (map && buf_grow_items(&n->keys, &kcap, n->n + 1, sizeof(*n->keys), MAX_ITEMS) != BUF_OK)
        return -1;
    n->cap = cap;
    if (map)
        n->keys[n->n] = key;
    n->items[n->n++] = v;
    return 0;
}

long config_map_index(const struct node *m, const char *key)
{
    if (!m || m->kind != NODE_MAP)
        return -1;
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->keys[i], key) == 0)
            return (long)i;
    }
    return -1;
}

struct node *config_map_get(const struct node *m, const char *key)
{
    long i = config_map_index(m, key);
    return i < 0 || !m->items ? NULL : m->items[i];
}

int config_map_set(struct ctx *c, struct node *m, const char *key, struct node *v)
{
    long i = config_map_index(m, key);
    char *k;

    if (m->kind != NODE_MAP) { /* config_node_push would keep v but not the key */
        config_node_free(v);
        ERR(c, NULL, "internal error: %s set on a value that is not a map", key);
        return -1;
    }
    if (i >= 0 && m->items) {
        config_node_free(m->items[i]);
        m->items[i] = v;
        return 0;
    }
    k = strdup(key);
    if (!k || config_node_push(m, k, v) < 0) {
        free(k);
        config_node_free(v);
        ERR(c, NULL, "too many keys or out of memory while applying the environment");
        return -1;
    }
    return 0;
}

struct node *config_tree_at(const struct node *root, const char *path)
{
    char key[64];
    const struct node *n = root;

    while (n && *path) {
        size_t len = strcspn(path, ".");
        snprintf(key, sizeof(key), "%.*s", (int)len, path);
        n = config_map_get(n, key);
        path += len + (path[len] == '.');
    }
    return (struct node *)n;
}

static struct node *node_copy(struct ctx *c, const struct node *src, int depth)
{
    struct node *n;

    if (depth > MAX_DEPTH)
        return NULL;
    n = config_node_new(c, src->kind, src->line, src->env);
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
        if (!v || (src->kind == NODE_MAP && !k) || config_node_push(n, k, v) < 0) {
            free(k);
            config_node_free(v);
            goto fail;
        }
    }
    return n;
fail:
    config_node_free(n);
    return NULL;
}

void config_node_mark_env(struct node *n, const char *env)
{
    n->env = env;
    n->line = 0;
    for (size_t i = 0; i < n->n; i++)
        config_node_mark_env(n->items[i], env);
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

bool config_is_null_word(const char *s)
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
            config_node_free(copy);
            build_error(b, n->line, "out of memory");
            return;
        }
        b->nanchors++;
    }
    config_node_free(b->anchors[i].node);
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
        if (config_map_index(m, src->keys[i]) >= 0)
            continue;
        if (config_node_push(m, src->keys[i], src->items[i]) < 0) {
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
    struct node *m = config_node_new(b->c, NODE_MAP, line, b->env);
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
            config_node_free(k);
            goto fail;
        }
        if (!k->text)
            k->text = strdup("");
        if (!k->text) {
            config_node_free(k);
            goto fail;
        }
        if (strlen(k->text) > MAX_KEY) {
            build_error(b, k->line, "a key is longer than %d bytes", MAX_KEY);
            config_node_free(k);
            goto fail;
        }
        merge = k->kind == NODE_SCALAR && !k->quoted && !strcmp(k->text, "<<");
        if (next_event(b, &ev) < 0) {
            config_node_free(k);
            goto fail;
        }
        v = build_node(b, &ev, depth + 1);
        yaml_event_delete(&ev);
        if (!v) {
            config_node_free(k);
            goto fail;
        }
        /* a block mapping or list starts on the next line; messages about it name the key's */
        if (v->kind == NODE_MAP || v->kind == NODE_SEQ)
            v->line = k->line;
        if (merge) {
            config_node_free(k);
            if (nmerges == sizeof(merges) / sizeof(merges[0])) {
                build_error(b, v->line, "too many merge keys in one mapping");
                config_node_free(v);
                goto fail;
            }
            merges[nmerges++] = v;
            continue;
        }
        at = config_map_index(m, k->text);
        if (at >= 0) {
            /* as the reference registry's YAML reader: the later value wins */
            WARN(b->c, k, "duplicate key \"%s\": the later value is used", k->text);
            config_node_free(m->items[at]);
            m->items[at] = v;
            config_node_free(k);
            continue;
        }
        if (config_node_push(m, k->text, v) < 0) {
            build_error(b, k->line, "more than %d keys in one mapping", MAX_ITEMS);
            config_node_free(k);
            config_node_free(v);
            goto fail;
        }
        k->text = NULL;
        config_node_free(k);
    }
    for (size_t i = 0; i < nmerges; i++) {
        if (merge_into(b, m, merges[i]) < 0)
            goto fail;
        config_node_free(merges[i]);
        merges[i] = NULL;
    }
    return m;
fail:
    for (size_t i = 0; i < nmerges; i++)
        config_node_free(merges[i]);
    config_node_free(m);
    return NULL;
}

static struct node *build_seq(struct builder *b, unsigned line, int depth)
{
    struct node *s = config_node_new(b->c, NODE_SEQ, line, b->env);
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
        if (config_node_push(s, NULL, v) < 0) {
            build_error(b, v->line, "more than %d elements in one list", MAX_ITEMS);
            config_node_free(v);
            goto fail;
        }
    }
fail:
    config_node_free(s);
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
    if ((plain && config_is_null_word(v)) || (tag && !strcmp(tag, YAML_NULL_TAG)))
        return config_node_new(b->c, NODE_NULL, line, b->env);
    n = config_node_new(b->c, NODE_SCALAR, line, b->env);
    if (!n)
        return NULL;
    n->quoted = !plain;
    n->text = strndup(v, len);
    if (!n->text) {
        config_node_free(n);
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
            config_node_free(n);
            return NULL;
        }
    }
    return n;
}

struct node *config_parse_yaml(struct ctx *c, const char *text, size_t len, const char *env,
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
        root = config_node_new(c, NODE_NULL, 1, env);
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
        config_node_free(root);
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
        config_node_free(b.anchors[i].node);
    }
    yaml_parser_delete(&b.parser);
    return root;
}
