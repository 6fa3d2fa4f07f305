#ifndef REGMIRROR_REFERENCE_H
#define REGMIRROR_REFERENCE_H
/*
 * reference: validation and decoding of what arrives in request URLs and headers:
 * repository names, tags, Range / Content-Range, query strings and percent-encoding.
 * Nothing here allocates except the functions that return a char *, which the caller frees.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* distribution's limit on the whole repository name. */
#define REFERENCE_NAME_MAX 255
/* Longest tag the grammar allows. */
#define REFERENCE_TAG_MAX 128
/* Longest decoded query value reference_query_get returns; longer values count as absent. */
#define REFERENCE_QUERY_VALUE_MAX 4096

/*
 * Repository name per the OCI distribution-spec:
 *   [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
 * at most REFERENCE_NAME_MAX bytes. So no uppercase, no empty component ("a//b", "/a", "a/"),
 * no "." or ".." component, no separator at either end of a component, and no separator run
 * other than "__" or any number of '-' ("a..b", "a___b", "a._b" are invalid).
 */
bool reference_name_valid(const char *name, size_t len);

/* Tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}, i.e. 1..128 bytes, not starting with '.' or '-'. */
bool reference_tag_valid(const char *tag, size_t len);

/*
 * Range request header of a blob GET, against a resource of size bytes.
 *
 * Accepted: exactly one byte range, "bytes=a-b", "bytes=a-" or "bytes=-n" (unit matched
 * case-insensitively; optional whitespace around the range and empty list elements such as
 * a trailing comma tolerated, as RFC 9110's list rule asks).
 *
 * REFERENCE_RANGE_OK: [*start, *end] inclusive, with end clamped to size - 1; "bytes=-n"
 *   selects the last n bytes, or the whole resource when n >= size.
 * REFERENCE_RANGE_IGNORE: serve the full resource with 200, as RFC 9110 allows a server to do:
 *   hdr NULL, another unit, bad syntax, a > b, more than one range (multipart answers are not
 *   worth having for blobs).
 * REFERENCE_RANGE_UNSATISFIABLE: answer 416: a >= size (including any range of an empty
 *   resource), and "bytes=-0".
 * Numbers too large for uint64_t saturate: a huge first position is past the end (416), a huge
 * last position clamps, a huge suffix selects the whole resource.
 * *start and *end are written only for REFERENCE_RANGE_OK.
 */
enum reference_range { REFERENCE_RANGE_OK, REFERENCE_RANGE_IGNORE, REFERENCE_RANGE_UNSATISFIABLE };
enum reference_range reference_parse_range(const char *hdr, uint64_t size, uint64_t *start,
                                           uint64_t *end);

/*
 * Content-Range of an upload PATCH. The OCI distribution-spec form is "<start>-<end>"
 * (inclusive); clients that send RFC 9110 shapes are also understood: "bytes=<start>-<end>" and
 * "bytes <start>-<end>/<total>", where <total> is "*" or a length greater than end.
 * Requires start <= end and no overflow. Returns 0 with *start, *end set, or -1 (then the API
 * answers 416). Whether start matches the upload's offset is the caller's check.
 */
int reference_parse_content_range(const char *hdr, uint64_t *start, uint64_t *end);

/*
 * Value of key in a query string such as "n=10&last=foo" (without the leading '?'), as a
 * malloc'd NUL-terminated string the caller frees. Keys and values are form-decoded ('+' is a
 * space, %XX a byte). The first occurrence of the key wins. "key" with no '=' gives "".
 * NULL when the key is absent, when that first occurrence is badly encoded, decodes to a NUL
 * byte or is longer than REFERENCE_QUERY_VALUE_MAX, or when out of memory.
 */
char *reference_query_get(const char *query, const char *key);

/*
 * reference_query_get that tells an absent key from an unusable value: 0 when key is absent
 * (*value NULL), 1 with *value (the caller frees) as reference_query_get returns it, -1 when
 * the first occurrence's value is badly encoded, decodes to a NUL byte, is too long or
 * memory ran out (*value NULL).
 */
int reference_query_lookup(const char *query, const char *key, char **value);

/* Longest host name (RFC 1035), without its port. */
#define REFERENCE_HOST_MAX 253

/*
 * A registry host as ?ns= names it: a DNS name (labels of [A-Za-z0-9-], 1..63 bytes, no '-'
 * at either end, joined by '.', at most REFERENCE_HOST_MAX bytes) with an optional ":port"
 * (1..65535, no leading zero).
 */
bool reference_host_valid(const char *host, size_t len);

/*
 * Percent-decodes len bytes of a URL path segment ('+' stays '+') into a malloc'd
 * NUL-terminated string the caller frees. NULL on a bad escape ("%zz", "%4"), an escape that
 * decodes to NUL, or out of memory.
 */
char *reference_url_decode(const char *s, size_t len);

/*
 * Percent-encodes every byte of the NUL-terminated s except the RFC 3986 unreserved set
 * (A-Z a-z 0-9 - . _ ~), for query values in Link and Location headers. Returns a malloc'd
 * string the caller frees, or NULL when out of memory.
 */
char *reference_url_encode(const char *s);

/*
 * Parses a non-negative decimal integer such as the "n" query value: digits only, at least one,
 * no sign or whitespace, no overflow. 0 with *out set, or -1. Whether 0 is allowed is the
 * caller's decision.
 */
int reference_parse_uint(const char *s, uint64_t *out);

#endif
