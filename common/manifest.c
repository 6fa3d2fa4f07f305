#include "manifest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

/* Longest piece of input quoted back in an error message. */
#define QUOTE_MAX 72

static const char *const kind_types[] = {
    [MANIFEST_DOCKER_V2] = MANIFEST_MT_DOCKER_V2,
    [MANIFEST_DOCKER_LIST] = MANIFEST_MT_DOCKER_LIST,
    [MANIFEST_OCI] = MANIFEST_MT_OCI_MANIFEST,
    [MANIFEST_OCI_INDEX] = MANIFEST_MT_OCI_INDEX,
};

#define NKINDS (sizeof(kind_types) / sizeof(kind_types[0]))

/* What a media type string says about the document. */
enum type_class { TYPE_OTHER = -2, TYPE_SCHEMA1 = -1 /* >= 0: an enum manifest_kind */ };

struct ctx {
    char *errbuf;
    size_t errlen;
};

__attribute__((format(printf, 3, 4))) static enum regerr fail(struct ctx *c, enum regerr e,
                                                              const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (c->errbuf != NULL && c->errlen > 0)
        vsnprintf(c->errbuf, c->errlen, fmt, ap);
    va_end(ap);
    return e;
}

static enum regerr oom(struct ctx *c)
{
    return fail(c, REG_ERR_INTERNAL, "out of memory");
}

/*
 * Copies at most QUOTE_MAX bytes of s into buf (QUOTE_MAX + 4 bytes) for an error message.
 * Bytes outside printable ASCII and the JSON-significant '"' and '\' become '?', so the
 * message can go into a JSON error body or a log line as it is, and cutting it short cannot
 * split a UTF-8 sequence.
 */
static const char *quote(const char *s, char *buf)
{
    size_t i;

    for (i = 0; i < QUOTE_MAX && s[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)s[i];

        buf[i] = (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') ? '?' : (char)ch;
    }
    if (s[i] != '\0') {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

static bool is_alnum(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

/* RFC 6838 restricted-name: [A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}; returns its length. */
static size_t restricted_name(const char *s)
{
    size_t n = 1;

    if (!is_alnum(s[0]))
        return 0;
    while (n < 127 && (is_alnum(s[n]) || (s[n] != '\0' && strchr("!#$&^_.+-", s[n]) != NULL)))
        n++;
    return n;
}

/*
 * A descriptor mediaType or artifactType: "type/subtype" in RFC 6838 restricted names, as the
 * image-spec requires, optionally followed by ";parameters" in printable ASCII.
 */
static bool media_type_valid(const char *s)
{
    size_t n, i;

    if (strlen(s) > MANIFEST_MAX_STRING)
        return false;
    n = restricted_name(s);
    if (n == 0 || s[n] != '/')
        return false;
    s += n + 1;
    n = restricted_name(s);
    if (n == 0)
        return false;
    s += n;
    if (*s == '\0')
        return true;
    if (*s != ';')
        return false;
    for (i = 1; s[i] != '\0'; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    }
    return true;
}

/* Classifies a media type, ignoring case and, for a header value, parameters and spaces. */
static int classify(const char *s)
{
    size_t len;
    size_t i;

    while (*s == ' ' || *s == '\t')
        s++;
    len = strcspn(s, ";");
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    for (i = 0; i < NKINDS; i++) {
        if (strlen(kind_types[i]) == len && strncasecmp(s, kind_types[i], len) == 0)
            return (int)i;
    }
    if ((strlen(MANIFEST_MT_DOCKER_V1) == len && strncasecmp(s, MANIFEST_MT_DOCKER_V1, len) == 0) ||
        (strlen(MANIFEST_MT_DOCKER_V1_SIGNED) == len &&
         strncasecmp(s, MANIFEST_MT_DOCKER_V1_SIGNED, len) == 0))
        return TYPE_SCHEMA1;
    return TYPE_OTHER;
}

static const char *sep(const char *path)
{
    return path[0] != '\0' ? "." : "";
}

/* Copies s or reports out of memory. */
static enum regerr dup(struct ctx *c, const char *s, char **dst)
{
    *dst = strdup(s);
    return *dst != NULL ? REG_OK : oom(c);
}

/*
 * Reads optional string property key of obj (at path) into a new *dst; absent leaves *dst
 * NULL. A media type is checked against the RFC 6838 shape; other strings only for length.
 */
static enum regerr opt_string(struct ctx *c, json_t *obj, const char *path, const char *key,
                              bool media_type, char **dst)
{
    json_t *v = json_object_get(obj, key);
    char q[QUOTE_MAX + 4];

    if (v == NULL)
        return REG_OK;
    if (!json_is_string(v))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s%s%s: must be a string", path, sep(path), key);
    if (media_type && !media_type_valid(json_string_value(v)))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s%s%s: invalid media type \"%s\"", path,
                    sep(path), key, quote(json_string_value(v), q));
    if (json_string_length(v) > MANIFEST_MAX_STRING)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s%s%s: longer than %d bytes", path, sep(path),
                    key, MANIFEST_MAX_STRING);
    return dup(c, json_string_value(v), dst);
}

/* Checks that optional property key of obj is an array of strings. */
static enum regerr opt_string_array(struct ctx *c, json_t *obj, const char *path, const char *key)
{
    json_t *v = json_object_get(obj, key);
    json_t *item;
    size_t i;

    if (v == NULL)
        return REG_OK;
    if (!json_is_array(v))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s%s%s: must be an array of strings", path,
                    sep(path), key);
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item))
            return fail(c, REG_ERR_MANIFEST_INVALID, "%s%s%s[%zu]: must be a string", path,
                        sep(path), key, i);
    }
    return REG_OK;
}

/* Copies a descriptor's "urls" (v: NULL or an array of strings, checked) into d. */
static enum regerr urls(struct ctx *c, json_t *v, struct manifest_desc *d)
{
    size_t n = json_array_size(v);
    if (n == 0)
        return REG_OK;
    d->urls = calloc(n, sizeof(*d->urls));
    if (!d->urls)
        return oom(c);
    for (size_t i = 0; i < n; i++) {
        enum regerr result = dup(c, json_string_value(json_array_get(v, i)), &d->urls[i]);
        if (result != REG_OK)
            return result;
        d->nurls++;
    }
    return REG_OK;
}

/* Checks the optional "annotations" string map of obj and serializes it into *dst. */
static enum regerr annotations(struct ctx *c, json_t *obj, const char *path, char **dst)
{
    json_t *a = json_object_get(obj, "annotations");
    const char *key;
    json_t *v;
    char q[QUOTE_MAX + 4];

    if (a == NULL)
        return REG_OK;
    if (!json_is_object(a))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s%sannotations: must be an object", path,
                    sep(path));
    json_object_foreach(a, key, v)
    {
        if (!json_is_string(v))
            return fail(c, REG_ERR_MANIFEST_INVALID,
                        "%s%sannotations[\"%s\"]: value must be a string", path, sep(path),
                        quote(key, q));
    }
    *dst = json_dumps(a, JSON_COMPACT);
    return *dst != NULL ? REG_OK : oom(c);
}

/* The "platform" object of an index entry. */
static enum regerr platform(struct ctx *c, json_t *desc, const char *path, struct manifest_desc *d)
{
    json_t *p = json_object_get(desc, "platform");
    char ppath[64];
    enum regerr result;

    if (p == NULL)
        return REG_OK;
    snprintf(ppath, sizeof(ppath), "%s.platform", path);
    if (!json_is_object(p))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s: must be an object", ppath);
    if (json_object_get(p, "architecture") == NULL || json_object_get(p, "os") == NULL)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s: needs \"architecture\" and \"os\"", ppath);
    result = opt_string(c, p, ppath, "architecture", false, &d->arch);
    if (result == REG_OK)
        result = opt_string(c, p, ppath, "os", false, &d->os);
    if (result == REG_OK)
        result = opt_string(c, p, ppath, "variant", false, &d->variant);
    if (result == REG_OK && json_object_get(p, "os.version") != NULL &&
        !json_is_string(json_object_get(p, "os.version")))
        result = fail(c, REG_ERR_MANIFEST_INVALID, "%s.os.version: must be a string", ppath);
    if (result == REG_OK)
        result = opt_string_array(c, p, ppath, "os.features");
    if (result == REG_OK)
        result = opt_string_array(c, p, ppath, "features");
    return result;
}

/* One descriptor at path; index entries (with_platform) may carry a platform. */
static enum regerr descriptor(struct ctx *c, json_t *j, const char *path, bool with_platform,
                              struct manifest_desc *d)
{
    json_t *v;
    char q[QUOTE_MAX + 4];
    enum regerr result;
    int rc;

    if (!json_is_object(j))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s: must be an object", path);

    if (json_object_get(j, "mediaType") == NULL)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s.mediaType: missing", path);
    result = opt_string(c, j, path, "mediaType", true, &d->media_type);
    if (result != REG_OK)
        return result;

    v = json_object_get(j, "digest");
    if (v == NULL)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s.digest: missing", path);
    if (!json_is_string(v))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s.digest: must be a string", path);
    rc = digest_parse(json_string_value(v), json_string_length(v), &d->digest);
    if (rc == -2)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s.digest: unsupported digest algorithm \"%s\"",
                    path, quote(json_string_value(v), q));
    if (rc != 0)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s.digest: invalid digest \"%s\"", path,
                    quote(json_string_value(v), q));

    v = json_object_get(j, "size");
    if (v == NULL)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s.size: missing", path);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s.size: must be an integer >= 0", path);
    d->size = (int64_t)json_integer_value(v);

    result = opt_string_array(c, j, path, "urls");
    if (result == REG_OK)
        result = urls(c, json_object_get(j, "urls"), d);
    if (result == REG_OK && json_object_get(j, "data") != NULL &&
        !json_is_string(json_object_get(j, "data")))
        result = fail(c, REG_ERR_MANIFEST_INVALID, "%s.data: must be a string", path);
    if (result == REG_OK)
        result = opt_string(c, j, path, "artifactType", true, &d->artifact_type);
    if (result == REG_OK)
        result = annotations(c, j, path, &d->annotations_json);
    if (result == REG_OK && with_platform)
        result = platform(c, j, path, d);
    return result;
}

/* The "layers" or "manifests" array, required or not. */
static enum regerr descriptor_array(struct ctx *c, json_t *root, const char *key, bool required,
                                    bool with_platform, struct manifest *m)
{
    json_t *arr = json_object_get(root, key);
    json_t *item;
    char path[64];
    size_t i, n;
    enum regerr result;

    if (arr == NULL)
        return required ? fail(c, REG_ERR_MANIFEST_INVALID, "%s: missing", key) : REG_OK;
    if (!json_is_array(arr))
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s: must be an array", key);
    n = json_array_size(arr);
    if (n > MANIFEST_MAX_DESCRIPTORS)
        return fail(c, REG_ERR_MANIFEST_INVALID, "%s: more than %d entries", key,
                    MANIFEST_MAX_DESCRIPTORS);
    if (n == 0)
        return REG_OK;
    m->layers = calloc(n, sizeof(*m->layers));
    if (m->layers == NULL)
        return oom(c);
    json_array_foreach(arr, i, item)
    {
        snprintf(path, sizeof(path), "%s[%zu]", key, i);
        /* Counted as it goes so manifest_free releases exactly what was filled. */
        m->nlayers = i + 1;
        result = descriptor(c, item, path, with_platform, &m->layers[i]);
        if (result != REG_OK)
            return result;
    }
    return REG_OK;
}

/*
 * The kind the document declares: Content-Type first, then the "mediaType" property, then the
 * shape. Also enforces that the two agree and that Docker documents carry "mediaType".
 */
static enum regerr choose_kind(struct ctx *c, json_t *root, int ct_class, enum manifest_kind *kind)
{
    json_t *mt = json_object_get(root, "mediaType");
    int field_class = TYPE_OTHER;
    char q[QUOTE_MAX + 4];

    if (mt != NULL) {
        if (!json_is_string(mt))
            return fail(c, REG_ERR_MANIFEST_INVALID, "mediaType: must be a string");
        field_class = classify(json_string_value(mt));
        /* The property is compared exactly: it is not a header, it has no parameters. */
        if (field_class >= 0 && strcmp(json_string_value(mt), kind_types[field_class]) != 0)
            field_class = TYPE_OTHER;
        if (field_class == TYPE_SCHEMA1)
            return fail(c, REG_ERR_UNSUPPORTED, "Docker schema1 manifests are not supported");
        if (field_class == TYPE_OTHER)
            return fail(c, REG_ERR_MANIFEST_INVALID, "mediaType: unsupported manifest type \"%s\"",
                        quote(json_string_value(mt), q));
    }

    if (ct_class >= 0) {
        if (mt != NULL && field_class != ct_class)
            return fail(c, REG_ERR_MANIFEST_INVALID,
                        "mediaType: \"%s\" does not match the Content-Type %s",
                        quote(json_string_value(mt), q), kind_types[ct_class]);
        *kind = (enum manifest_kind)ct_class;
    } else if (mt != NULL) {
        *kind = (enum manifest_kind)field_class;
    } else if (json_object_get(root, "manifests") != NULL) {
        *kind = MANIFEST_OCI_INDEX;
    } else if (json_object_get(root, "config") != NULL || json_object_get(root, "layers") != NULL) {
        *kind = MANIFEST_OCI;
    } else {
        return fail(c, REG_ERR_MANIFEST_INVALID,
                    "neither a manifest nor an index: no mediaType, config, layers or manifests");
    }

    if ((*kind == MANIFEST_DOCKER_V2 || *kind == MANIFEST_DOCKER_LIST) && mt == NULL)
        return fail(c, REG_ERR_MANIFEST_INVALID, "mediaType: missing, required for %s",
                    kind_types[*kind]);
    return REG_OK;
}

static enum regerr parse_image(struct ctx *c, json_t *root, struct manifest *m)
{
    enum regerr result;

    /* distribution rejects an OCI manifest that also looks like an index, so that one body
     * cannot be read as both. */
    if (m->kind == MANIFEST_OCI && json_object_get(root, "manifests") != NULL)
        return fail(c, REG_ERR_MANIFEST_INVALID, "manifests: not allowed in an image manifest");
    if (json_object_get(root, "config") == NULL)
        return fail(c, REG_ERR_MANIFEST_INVALID, "config: missing");
    result = descriptor(c, json_object_get(root, "config"), "config", false, &m->config);
    if (result != REG_OK)
        return result;
    m->has_config = true;
    return descriptor_array(c, root, "layers", false, false, m);
}

static enum regerr parse_index(struct ctx *c, json_t *root, struct manifest *m)
{
    if (m->kind == MANIFEST_OCI_INDEX &&
        (json_object_get(root, "config") != NULL || json_object_get(root, "layers") != NULL))
        return fail(c, REG_ERR_MANIFEST_INVALID, "config/layers: not allowed in an index");
    return descriptor_array(c, root, "manifests", true, true, m);
}

/* subject, artifactType and annotations, which only the OCI kinds define. */
static enum regerr parse_oci_extras(struct ctx *c, json_t *root, struct manifest *m)
{
    json_t *subject = json_object_get(root, "subject");
    enum regerr result;

    if (subject != NULL) {
        result = descriptor(c, subject, "subject", false, &m->subject);
        if (result != REG_OK)
            return result;
        m->has_subject = true;
    }
    result = opt_string(c, root, "", "artifactType", true, &m->artifact_type);
    if (result != REG_OK)
        return result;
    if (m->artifact_type == NULL && m->kind == MANIFEST_OCI) {
        result = dup(c, m->config.media_type, &m->artifact_type);
        if (result != REG_OK)
            return result;
    }
    return annotations(c, root, "", &m->annotations_json);
}

enum regerr manifest_parse(const char *body, size_t len, const char *content_type,
                           struct manifest *out, char *errbuf, size_t errlen)
{
    struct ctx c = {errbuf, errlen};
    int ct_class = content_type != NULL ? classify(content_type) : TYPE_OTHER;
    json_t *root = NULL;
    json_t *sv;
    json_error_t jerr;
    enum regerr result;

    memset(out, 0, sizeof(*out));
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';

    if (ct_class == TYPE_SCHEMA1) {
        result = fail(&c, REG_ERR_UNSUPPORTED, "Docker schema1 manifests are not supported");
        goto out;
    }
    if (body == NULL) {
        result = fail(&c, REG_ERR_MANIFEST_INVALID, "empty body");
        goto out;
    }
    /* Duplicate keys are refused: two parsers picking different copies of "layers" is how a
     * manifest could mean one thing here and another to a client. */
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        result = fail(&c, REG_ERR_MANIFEST_INVALID, "invalid JSON at line %d, column %d: %s",
                      jerr.line, jerr.column, jerr.text);
        goto out;
    }
    if (!json_is_object(root)) {
        result = fail(&c, REG_ERR_MANIFEST_INVALID, "not a JSON object");
        goto out;
    }

    sv = json_object_get(root, "schemaVersion");
    if (json_is_integer(sv) && json_integer_value(sv) == 1) {
        result = fail(&c, REG_ERR_UNSUPPORTED, "Docker schema1 manifests are not supported");
        goto out;
    }
    if (!json_is_integer(sv) || json_integer_value(sv) != 2) {
        result = fail(&c, REG_ERR_MANIFEST_INVALID, "schemaVersion: must be the integer 2");
        goto out;
    }

    result = choose_kind(&c, root, ct_class, &out->kind);
    if (result != REG_OK)
        goto out;
    result = dup(&c, kind_types[out->kind], &out->media_type);
    if (result != REG_OK)
        goto out;

    if (out->kind == MANIFEST_DOCKER_V2 || out->kind == MANIFEST_OCI)
        result = parse_image(&c, root, out);
    else
        result = parse_index(&c, root, out);
    if (result == REG_OK && (out->kind == MANIFEST_OCI || out->kind == MANIFEST_OCI_INDEX))
        result = parse_oci_extras(&c, root, out);

out:
    json_decref(root);
    if (result != REG_OK)
        manifest_free(out);
    return result;
}

static void desc_free(struct manifest_desc *d)
{
    free(d->media_type);
    free(d->artifact_type);
    free(d->os);
    free(d->arch);
    free(d->variant);
    free(d->annotations_json);
    for (size_t i = 0; i < d->nurls; i++)
        free(d->urls[i]);
    free(d->urls);
}

void manifest_free(struct manifest *m)
{
    size_t i;

    if (m == NULL)
        return;
    free(m->media_type);
    desc_free(&m->config);
    for (i = 0; i < m->nlayers; i++)
        desc_free(&m->layers[i]);
    free(m->layers);
    desc_free(&m->subject);
    free(m->artifact_type);
    free(m->annotations_json);
    memset(m, 0, sizeof(*m));
}

const char *manifest_kind_media_type(enum manifest_kind kind)
{
    if ((size_t)kind >= NKINDS)
        return "";
    return kind_types[kind];
}

/* RFC 9110 tchar. */
static bool is_tchar(char ch)
{
    return is_alnum(ch) || (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static size_t token_len(const char *s, const char *end)
{
    size_t n = 0;

    while (s + n < end && is_tchar(s[n]))
        n++;
    return n;
}

static const char *skip_ows(const char *s, const char *end)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    return s;
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ); -1 if malformed, else whether
 * it is zero. */
static int qvalue_is_zero(const char *s, size_t n)
{
    size_t i;
    bool zero;

    if (n == 0 || n > 5 || (s[0] != '0' && s[0] != '1'))
        return -1;
    zero = s[0] == '0';
    if (n == 1)
        return zero;
    if (s[1] != '.')
        return -1;
    for (i = 2; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || (!zero && s[i] != '0'))
            return -1;
        if (s[i] != '0')
            zero = false;
    }
    return zero;
}

/*
 * Parses one Accept element [s, end): media-range *( OWS ";" OWS name "=" value ) with
 * surrounding whitespace. Returns -1 if malformed, 0 if it does not match mt, else how
 * specific the match is (1 any, 2 type wildcard, 3 exact); *q_zero reports "q=0".
 */
static int accept_element(const char *s, const char *end, const char *mt, bool *q_zero)
{
    const char *type, *sub, *slash = strchr(mt, '/');
    size_t tlen, slen;

    *q_zero = false;
    s = skip_ows(s, end);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    type = s;
    tlen = token_len(s, end);
    if (tlen == 0 || type + tlen >= end || type[tlen] != '/')
        return -1;
    sub = type + tlen + 1;
    slen = token_len(sub, end);
    if (slen == 0)
        return -1;
    s = sub + slen;

    while (s = skip_ows(s, end), s < end) {
        const char *name, *val;
        size_t nlen, vlen;

        if (*s != ';')
            return -1;
        s = skip_ows(s + 1, end);
        name = s;
        nlen = token_len(s, end);
        if (nlen == 0 || name + nlen >= end || name[nlen] != '=')
            return -1;
        val = name + nlen + 1;
        if (val < end && *val == '"') {
            for (s = val + 1; s < end && *s != '"'; s++) {
                if (*s == '\\')
                    s++;
            }
            if (s >= end)
                return -1;
            s++;
            vlen = (size_t)(s - val);
        } else {
            vlen = token_len(val, end);
            if (vlen == 0)
                return -1;
            s = val + vlen;
        }
        if (nlen == 1 && (name[0] == 'q' || name[0] == 'Q')) {
            int z = qvalue_is_zero(val, vlen);

            if (z < 0)
                return -1;
            *q_zero = z == 1;
        }
    }

    if (tlen == 1 && type[0] == '*')
        return (slen == 1 && sub[0] == '*') ? 1 : -1;
    if (slash == NULL || (size_t)(slash - mt) != tlen || strncasecmp(mt, type, tlen) != 0)
        return 0;
    if (slen == 1 && sub[0] == '*')
        return 2;
    if (strlen(slash + 1) != slen || strncasecmp(slash + 1, sub, slen) != 0)
        return 0;
    return 3;
}

bool manifest_accepts(const char *const *accept_values, size_t n, const char *mt)
{
    int best = 0;
    bool best_ok = false, any_valid = false;
    size_t i;

    if (mt == NULL)
        return false;
    for (i = 0; i < n; i++) {
        const char *s = accept_values[i];

        while (s != NULL && *s != '\0') {
            const char *e = s;
            bool quoted = false, q_zero;
            int spec;

            /* Commas split elements except inside a quoted parameter value. */
            for (; *e != '\0' && (quoted || *e != ','); e++) {
                if (*e == '"')
                    quoted = !quoted;
                else if (quoted && *e == '\\' && e[1] != '\0')
                    e++;
            }
            spec = accept_element(s, e, mt, &q_zero);
            s = *e == ',' ? e + 1 : e;
            if (spec < 0)
                continue;
            any_valid = true;
            if (spec > best) {
                best = spec;
                best_ok = !q_zero;
            } else if (spec == best && !q_zero) {
                best_ok = true;
            }
        }
    }
    if (!any_valid)
        return true;
    return best > 0 && best_ok;
}
