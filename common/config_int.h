#ifndef REGMIRROR_CONFIG_INT_H
#define REGMIRROR_CONFIG_INT_H
/*
 * config_int: what the pieces of config share; included only by common/config*.c.
 *
 * A configuration is read in three steps: libyaml events build a small generic tree
 * (struct node), REGISTRY_* variables are merged into that tree, and the tree is decoded into
 * struct config by walking tables of fields (struct field / struct schema). The same tables
 * drive defaults, environment matching, printing and freeing, so a new key is one table line.
 *
 *   config.c         the entry points, the load context's messages, the checks across keys
 *   config_yaml.c    the generic tree and YAML to tree
 *   config_schema.c  the tables of keys
 *   config_decode.c  scalars, and a tree decoded into struct config through the tables
 *   config_env.c     REGISTRY_* variables merged into the tree
 *   config_print.c   struct config printed as YAML, secrets masked
 */
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

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
    size_t errors_cap, warnings_cap; /* allocated slots of diag's two lists */
    const char *name;                /* file name for messages */
    size_t nodes;
    bool failed;
    struct envvar *envs; /* kept until the end of the load: nodes point at the names */
    size_t nenvs;
};

/* config.c: diagnostics */
/* Appends " (config.yml:12)" or " (from REGISTRY_HTTP_ADDR)" when the origin is known. */
void config_report(struct ctx *c, bool error, const struct node *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define ERR(c, n, ...) config_report((c), true, (n), __VA_ARGS__)
#define WARN(c, n, ...) config_report((c), false, (n), __VA_ARGS__)
void config_oom(struct ctx *c);
/* A scalar for messages: quoted, cut at 60 bytes, control bytes escaped. */
const char *config_quote_msg(const char *s, char *buf, size_t len);
const char *config_describe(const struct node *n, char *buf, size_t len);
/* out (PATH_LEN bytes) = "path.key", or "key" at the top. */
void config_join(char *out, const char *path, const char *key);

/* config_yaml.c: the tree */
struct node *config_node_new(struct ctx *c, enum node_kind kind, unsigned line, const char *env);
void config_node_free(struct node *n);
/* Appends (key, v) to a mapping or v to a list; takes both on success. */
int config_node_push(struct node *n, char *key, struct node *v);
long config_map_index(const struct node *m, const char *key);
struct node *config_map_get(const struct node *m, const char *key);
/* Sets key to v in the map m, replacing an existing value; takes v (freed on failure). */
int config_map_set(struct ctx *c, struct node *m, const char *key, struct node *v);
/* The node at a dotted path of fixed keys ("http.tls.minimumtls"), or NULL. */
struct node *config_tree_at(const struct node *root, const char *path);
void config_node_mark_env(struct node *n, const char *env);
bool config_is_null_word(const char *s);
/*
 * Parses the first YAML document of text into a tree (a NODE_NULL root for an empty stream).
 * Returns NULL with *error set (malloc'd) when the text is not YAML or is over the limits.
 */
struct node *config_parse_yaml(struct ctx *c, const char *text, size_t len, const char *env,
                               char **error);

/* config_decode.c: scalars */
/* Decodes one UTF-8 sequence at s; returns its length, or 0 when it is not valid UTF-8. */
size_t config_utf8_next(const unsigned char *s, unsigned long *cp);
bool config_utf8_valid(const char *s);
bool config_parse_bool(const char *s, bool *out);
/* Decimal, 0x hex or 0o octal, with an optional sign. */
bool config_parse_ll(const char *s, long long *out);

/* ------------------------------------------------------------------------------------------ */
/* Schema                                                                                      */

enum ftype {
    T_STR,     /* char * */
    T_BOOL,    /* bool */
    T_INT,     /* int, in [min, max] */
    T_I64,     /* int64_t, in [min, max] */
    T_DUR,     /* int64_t milliseconds */
    T_AMOUNT,  /* struct config_amount: a count in [min, max], or a percentage "N%" */
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

/* config_schema.c: the tables */
extern const struct schema config_root_schema;
extern const struct schema config_storage_schema;
/* The storage sections that are not drivers. */
bool config_storage_param_section(const char *key);
const struct field *config_find_field(const struct schema *s, const char *key);

/* config_decode.c: the tree into struct config */
void config_free_strlist(char **list, size_t n);
void config_free_kv(struct config_kv *kv, size_t n);
void config_free_struct(const struct schema *s, void *base);
void config_set_string(struct ctx *c, char **slot, const char *value);
/* Flattens a free-form value into "a.b" / "list.0" keys; *cap is the allocated size of *kv. */
void config_flatten(struct ctx *c, const struct node *n, const char *prefix, const char *path,
                    struct config_kv **kv, size_t *nkv, size_t *cap);
/* Sets every field to its default; strings to "" when they have none. */
void config_apply_defaults(struct ctx *c, const struct schema *s, void *base);
void config_decode_struct(struct ctx *c, const struct schema *s, const struct node *n,
                          const char *path, void *base);

/* config_env.c */
/* "storage: inmemory" is "storage: {inmemory: {}}", as the reference reads it. */
void config_normalize_selector(struct ctx *c, struct node *root, const char *key);
/* Applies the REGISTRY_* variables of envp to the tree, in byte order of their names. */
void config_apply_env(struct ctx *c, struct node **root, char *const *envp);

/* config_print.c */
/* A driver with no table of its own: its name and the parameters as they were given. */
void config_print_storage_params(struct printer *p, const void *base, int indent);

#endif
