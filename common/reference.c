#include "reference.h"

#include <stdlib.h>
#include <string.h>

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_word(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

bool reference_name_valid(const char *name, size_t len)
{
    /* What the previous byte allows next: the grammar is regular, so one byte of state is
     * enough. 'a' after an alphanumeric, 's' at a component start or after '.', "__", '/',
     * '_' after a single underscore, '-' after dashes. */
    char state = 's';
    size_t i;

    if (name == NULL || len == 0 || len > REFERENCE_NAME_MAX)
        return false;
    for (i = 0; i < len; i++) {
        char c = name[i];

        if (is_lower_alnum(c)) {
            state = 'a';
        } else if (state == 'a' && (c == '.' || c == '/')) {
            state = 's';
        } else if (state == 'a' && c == '_') {
            state = '_';
        } else if (state == '_' && c == '_') {
            state = 's';
        } else if ((state == 'a' || state == '-') && c == '-') {
            state = '-';
        } else {
            return false;
        }
    }
    return state == 'a';
}

bool reference_tag_valid(const char *tag, size_t len)
{
    size_t i;

    if (tag == NULL || len == 0 || len > REFERENCE_TAG_MAX || !is_word(tag[0]))
        return false;
    for (i = 1; i < len; i++) {
        if (!is_word(tag[i]) && tag[i] != '.' && tag[i] != '-')
            return false;
    }
    return true;
}

/*
 * Reads decimal digits at *p into *v, advancing *p; returns how many there were. With
 * saturate, values past UINT64_MAX become UINT64_MAX; without it, overflow returns 0 digits
 * read so the caller rejects the input.
 */
static size_t read_digits(const char **p, uint64_t *v, bool saturate)
{
    const char *s = *p;
    uint64_t n = 0;
    size_t count = 0;

    while (is_digit(*s)) {
        uint64_t d = (uint64_t)(*s - '0');

        if (n > (UINT64_MAX - d) / 10) {
            if (!saturate)
                return 0;
            n = UINT64_MAX;
        } else {
            n = n * 10 + d;
        }
        s++;
        count++;
    }
    *p = s;
    *v = n;
    return count;
}

static const char *skip_ows(const char *s)
{
    while (is_ows(*s))
        s++;
    return s;
}

/* Case-insensitive prefix match of a lowercase word; returns the rest or NULL. */
static const char *match_word(const char *s, const char *word)
{
    for (; *word != '\0'; s++, word++) {
        if (lower(*s) != *word)
            return NULL;
    }
    return s;
}

/*
 * Finds the only non-empty element of a comma-separated list: *elem and *elen give it without
 * surrounding whitespace. Returns the number of non-empty elements seen, stopping at 2.
 */
static int only_element(const char *s, const char **elem, size_t *elen)
{
    int count = 0;

    while (*s != '\0' && count < 2) {
        const char *start = skip_ows(s);
        const char *stop = start;
        const char *next;

        while (*stop != '\0' && *stop != ',')
            stop++;
        next = *stop == ',' ? stop + 1 : stop;
        while (stop > start && is_ows(stop[-1]))
            stop--;
        if (stop > start) {
            *elem = start;
            *elen = (size_t)(stop - start);
            count++;
        }
        s = next;
    }
    return count;
}

enum reference_range reference_parse_range(const char *hdr, uint64_t size, uint64_t *start,
                                           uint64_t *end)
{
    const char *p, *elem = NULL;
    size_t elen = 0;
    uint64_t first = 0, last = UINT64_MAX;
    bool suffix = false, has_last = false;

    if (hdr == NULL)
        return REFERENCE_RANGE_IGNORE;
    p = match_word(skip_ows(hdr), "bytes");
    if (p == NULL || *p != '=')
        return REFERENCE_RANGE_IGNORE;
    if (only_element(p + 1, &elem, &elen) != 1)
        return REFERENCE_RANGE_IGNORE;

    p = elem;
    if (*p == '-') {
        suffix = true;
        p++;
        if (read_digits(&p, &last, true) == 0)
            return REFERENCE_RANGE_IGNORE;
    } else {
        if (read_digits(&p, &first, true) == 0 || *p != '-')
            return REFERENCE_RANGE_IGNORE;
        p++;
        has_last = read_digits(&p, &last, true) > 0;
    }
    if (p != elem + elen)
        return REFERENCE_RANGE_IGNORE;
    if (has_last && last < first)
        return REFERENCE_RANGE_IGNORE;

    if (suffix) {
        /* "last" holds the suffix length here. */
        if (last == 0 || size == 0)
            return REFERENCE_RANGE_UNSATISFIABLE;
        *start = last >= size ? 0 : size - last;
        *end = size - 1;
        return REFERENCE_RANGE_OK;
    }
    if (first >= size)
        return REFERENCE_RANGE_UNSATISFIABLE;
    *start = first;
    *end = (!has_last || last >= size) ? size - 1 : last;
    return REFERENCE_RANGE_OK;
}

int reference_parse_content_range(const char *hdr, uint64_t *start, uint64_t *end)
{
    const char *p, *rest;
    uint64_t a, b, total;
    bool rfc_form = false;

    if (hdr == NULL)
        return -1;
    p = skip_ows(hdr);
    rest = match_word(p, "bytes");
    if (rest != NULL && *rest == '=') {
        p = rest + 1;
    } else if (rest != NULL && *rest == ' ') {
        p = rest + 1;
        rfc_form = true;
    }
    if (read_digits(&p, &a, false) == 0 || *p != '-')
        return -1;
    p++;
    if (read_digits(&p, &b, false) == 0 || b < a)
        return -1;
    if (rfc_form) {
        if (*p != '/')
            return -1;
        p++;
        if (*p == '*') {
            p++;
        } else if (read_digits(&p, &total, false) == 0 || b >= total) {
            return -1;
        }
    }
    if (*skip_ows(p) != '\0')
        return -1;
    *start = a;
    *end = b;
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes len bytes at s into a new string; '+' becomes a space when plus_is_space. */
static char *percent_decode(const char *s, size_t len, bool plus_is_space)
{
    char *out = malloc(len + 1);
    size_t i, o = 0;

    if (out == NULL)
        return NULL;
    for (i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < len ? hex_value(s[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;

            /* A decoded NUL would silently cut the C string the rest of regmirror sees. */
            if (lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (s[i] == '\0') {
            free(out);
            return NULL;
        } else {
            out[o++] = (plus_is_space && s[i] == '+') ? ' ' : s[i];
        }
    }
    out[o] = '\0';
    return out;
}

char *reference_url_decode(const char *s, size_t len)
{
    if (s == NULL)
        return NULL;
    return percent_decode(s, len, false);
}

int reference_query_lookup(const char *query, const char *key, char **value)
{
    const char *p = query;

    *value = NULL;
    if (query == NULL || key == NULL)
        return 0;
    while (*p != '\0') {
        const char *pair_end = strchr(p, '&');
        const char *eq;
        size_t pair_len;
        char *k;
        bool match;

        if (pair_end == NULL)
            pair_end = p + strlen(p);
        pair_len = (size_t)(pair_end - p);
        eq = memchr(p, '=', pair_len);
        k = percent_decode(p, eq != NULL ? (size_t)(eq - p) : pair_len, true);
        match = k != NULL && strcmp(k, key) == 0;
        free(k);
        if (match) {
            const char *v = eq != NULL ? eq + 1 : pair_end;
            char *decoded = percent_decode(v, (size_t)(pair_end - v), true);

            if (decoded == NULL || strlen(decoded) > REFERENCE_QUERY_VALUE_MAX) {
                free(decoded);
                return -1;
            }
            *value = decoded;
            return 1;
        }
        p = *pair_end == '&' ? pair_end + 1 : pair_end;
    }
    return 0;
}

char *reference_query_get(const char *query, const char *key)
{
    char *value;
    reference_query_lookup(query, key, &value);
    return value;
}

static bool is_alnum(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

bool reference_host_valid(const char *host, size_t len)
{
    const char *colon = memchr(host, ':', len);
    size_t hl = colon ? (size_t)(colon - host) : len, label = 0;

    if (hl == 0 || hl > REFERENCE_HOST_MAX)
        return false;
    for (size_t i = 0; i < hl; i++) {
        char c = host[i];
        if (c == '.') {
            if (label == 0 || host[i - 1] == '-')
                return false;
            label = 0;
        } else if (is_alnum(c) || (c == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    if (label == 0 || host[hl - 1] == '-')
        return false;
    if (colon) {
        const char *port = colon + 1;
        size_t pl = len - hl - 1;
        unsigned long v = 0;
        if (pl == 0 || pl > 5 || port[0] == '0')
            return false;
        for (size_t i = 0; i < pl; i++) {
            if (port[i] < '0' || port[i] > '9')
                return false;
            v = v * 10 + (unsigned long)(port[i] - '0');
        }
        if (v > 65535)
            return false;
    }
    return true;
}

char *reference_url_encode(const char *s)
{
    static const char hexdig[] = "0123456789ABCDEF";
    size_t len, o = 0;
    char *out;

    if (s == NULL)
        return NULL;
    len = strlen(s);
    if (len > (SIZE_MAX - 1) / 3)
        return NULL;
    out = malloc(len * 3 + 1);
    if (out == NULL)
        return NULL;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (is_word((char)c) || c == '-' || c == '.' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hexdig[c >> 4];
            out[o++] = hexdig[c & 0x0f];
        }
    }
    out[o] = '\0';
    return out;
}

int reference_parse_uint(const char *s, uint64_t *out)
{
    const char *p = s;
    uint64_t v;

    if (s == NULL || read_digits(&p, &v, false) == 0 || *p != '\0')
        return -1;
    *out = v;
    return 0;
}
