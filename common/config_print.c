/*
 * config_print: struct config written back as YAML (check-config), credentials masked; the
 * output loads again as the same configuration.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_int.h"

#define MASK "*****"

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

    if (!s[0] || config_is_null_word(s) || config_parse_bool(s, &b) || config_parse_ll(s, &ll))
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
        size_t n = config_utf8_next(p, &cp);

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
    case T_AMOUNT: {
        const struct config_amount *a = CAT(base, f->off, struct config_amount);
        put_key(p, indent, f->key);
        fprintf(p->f, " %lld%s\n", (long long)a->value, a->percent ? "%" : "");
        return;
    }
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

void config_print_storage_params(struct printer *p, const void *base, int indent)
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
    print_struct(&p, &config_root_schema, cfg, 0);
}
