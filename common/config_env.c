/*
 * config_env: REGISTRY_* variables merged into the tree before decoding, as distribution's
 * configuration/parser.go applies them (see config.h for the rules).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_int.h"

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
    struct node *v = config_map_get(m, key);

    if (v && v->kind == kind)
        return v;
    v = config_node_new(c, kind, 0, var);
    if (!v) {
        ERR(c, NULL, "%s: the configuration is too large", var);
        return NULL;
    }
    if (config_map_set(c, m, key, v) < 0)
        return NULL;
    return v;
}

static bool parse_index(const char *part, size_t *out)
{
    long long v;

    if (!isdigit((unsigned char)part[0]) || !config_parse_ll(part, &v) || v > MAX_ITEMS)
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
        config_node_free(payload);
        return;
    }
    if (idx > seq->n) {
        ERR(c, NULL, "%s: index %zu is past the end of a list of %zu", var, idx, seq->n);
        config_node_free(payload);
        return;
    }
    if (nparts == 1) {
        if (idx < seq->n) {
            config_node_free(seq->items[idx]);
            seq->items[idx] = payload;
        } else if (config_node_push(seq, NULL, payload) < 0) {
            ERR(c, NULL, "%s: the list is too long", var);
            config_node_free(payload);
        }
        return;
    }
    if (idx == seq->n) {
        e = config_node_new(c, NODE_MAP, 0, var);
        if (!e || config_node_push(seq, NULL, e) < 0) {
            config_node_free(e);
            ERR(c, NULL, "%s: the list is too long", var);
            config_node_free(payload);
            return;
        }
    }
    e = seq->items[idx];
    if (e->kind != NODE_MAP && e->kind != NODE_SEQ) {
        struct node *m = config_node_new(c, NODE_MAP, 0, var);
        if (!m) {
            ERR(c, NULL, "%s: the configuration is too large", var);
            config_node_free(payload);
            return;
        }
        config_node_free(e);
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
            config_map_set(c, m, parts[0], payload);
            return;
        }
        child = ensure_container(c, m, parts[0], NODE_MAP, var);
    } else if (nparts == 1) {
        config_node_free(m->items[i]);
        m->items[i] = payload;
        return;
    } else {
        child = m->items[i];
        if (child->kind != NODE_MAP && child->kind != NODE_SEQ)
            child = ensure_container(c, m, m->keys[i], NODE_MAP, var);
    }
    if (!child) {
        config_node_free(payload);
        return;
    }
    env_apply(c, NULL, true, child, parts + 1, nparts - 1, payload, var);
}

/* REGISTRY_STORAGE=<driver> / REGISTRY_AUTH=<type>: the named section alone, empty. */
static void env_select(struct ctx *c, struct node *m, const struct field *f, struct node *payload,
                       const char *var)
{
    struct node *old = config_map_get(m, f->key);
    struct node *sel;
    struct node *empty;
    char *name;

    if (payload->kind != NODE_SCALAR) {
        config_map_set(c, m, f->key, payload);
        return;
    }
    if (strlen(payload->text) > MAX_KEY) {
        ERR(c, payload, "%s: longer than %d bytes", f->key, MAX_KEY);
        config_node_free(payload);
        return;
    }
    sel = config_node_new(c, NODE_MAP, 0, var);
    empty = config_node_new(c, NODE_NULL, 0, var);
    name = strdup(payload->text);
    if (!sel || !empty || !name)
        goto fail;
    /* storage keeps its parameter sections (delete, cache, ...): only the driver changes */
    if (f->sub == &config_storage_schema && old && old->kind == NODE_MAP) {
        for (size_t i = 0; i < old->n; i++) {
            if (!config_storage_param_section(old->keys[i]))
                continue;
            if (config_node_push(sel, old->keys[i], old->items[i]) < 0)
                goto fail;
            old->keys[i] = NULL;
            old->items[i] = NULL;
        }
    }
    if (config_map_index(sel, name) < 0) {
        if (config_node_push(sel, name, empty) < 0)
            goto fail;
        name = NULL;
        empty = NULL;
    }
    free(name);
    config_node_free(empty);
    config_node_free(payload);
    config_map_set(c, m, f->key, sel);
    return;
fail:
    ERR(c, NULL, "%s: out of memory", var);
    free(name);
    config_node_free(empty);
    config_node_free(sel);
    config_node_free(payload);
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
        config_node_free(payload);
        return;
    }
    if (nparts == 1) {
        if (f->flags & F_SELECTOR)
            env_select(c, n, f, payload, var);
        else
            config_map_set(c, n, f->key, payload);
        return;
    }
    switch (f->type) {
    case T_STRUCT:
        child = ensure_container(c, n, f->key, NODE_MAP, var);
        if (child)
            env_apply(c, f->sub, maplike, child, parts + 1, nparts - 1, payload, var);
        else
            config_node_free(payload);
        break;
    case T_LIST:
    case T_STRLIST:
        child = ensure_container(c, n, f->key, NODE_SEQ, var);
        if (child)
            env_index(c, f->type == T_LIST ? f->sub : NULL, maplike, child, parts + 1, nparts - 1,
                      payload, var);
        else
            config_node_free(payload);
        break;
    case T_KV:
    case T_HEADERS:
        child = ensure_container(c, n, f->key, NODE_MAP, var);
        if (child)
            env_generic(c, child, parts + 1, nparts - 1, payload, var);
        else
            config_node_free(payload);
        break;
    default:
        WARN(c, NULL, "%s: %s takes a single value; the variable is ignored", var, f->key);
        config_node_free(payload);
        break;
    }
}

static int envvar_cmp(const void *a, const void *b)
{
    return strcmp(((const struct envvar *)a)->name, ((const struct envvar *)b)->name);
}

void config_normalize_selector(struct ctx *c, struct node *root, const char *key)
{
    struct node *v = config_map_get(root, key);
    struct node *m, *empty;
    char *name;

    if (!v || v->kind != NODE_SCALAR)
        return;
    if (strlen(v->text) > MAX_KEY) {
        ERR(c, v, "%s: longer than %d bytes", key, MAX_KEY);
        return;
    }
    m = config_node_new(c, NODE_MAP, v->line, v->env);
    empty = config_node_new(c, NODE_NULL, v->line, v->env);
    name = strdup(v->text);
    if (!m || !empty || !name || config_node_push(m, name, empty) < 0) {
        config_node_free(m);
        config_node_free(empty);
        free(name);
        config_oom(c);
        return;
    }
    config_map_set(c, root, key, m);
}

void config_apply_env(struct ctx *c, struct node **root, char *const *envp)
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
        config_oom(c);
        return;
    }
    for (char *const *e = envp; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, prefix, sizeof(prefix) - 1) || !eq)
            continue;
        if (!config_utf8_valid(*e)) {
            ERR(c, NULL, "%.*s: not valid UTF-8", (int)(eq - *e), *e);
            continue;
        }
        c->envs[c->nenvs].name = strndup(*e, (size_t)(eq - *e));
        c->envs[c->nenvs].value = strdup(eq + 1);
        if (!c->envs[c->nenvs].name || !c->envs[c->nenvs].value) {
            free(c->envs[c->nenvs].name);
            free(c->envs[c->nenvs].value);
            config_oom(c);
            return;
        }
        c->nenvs++;
    }
    qsort(c->envs, c->nenvs, sizeof(*c->envs), envvar_cmp);

    if ((*root)->kind == NODE_NULL) {
        struct node *m = config_node_new(c, NODE_MAP, 0, NULL);
        if (!m) {
            config_oom(c);
            return;
        }
        config_node_free(*root);
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
            config_oom(c);
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
        payload = config_parse_yaml(c, value, strlen(value), var, &error);
        if (!payload) {
            /* not YAML: the reference would refuse to start; take the text as it is */
            free(error);
            payload = config_node_new(c, NODE_SCALAR, 0, var);
            if (payload)
                payload->text = strdup(value);
            if (!payload || !payload->text) {
                config_node_free(payload);
                free(copy);
                config_oom(c);
                return;
            }
            payload->quoted = true;
        }
        config_node_mark_env(payload, var);
        env_apply(c, &config_root_schema, false, *root, parts, nparts, payload, var);
        free(copy);
    }
}
