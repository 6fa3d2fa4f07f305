/*
 * libFuzzer target for the URL and header parsers in reference.c. The input is used whole as
 * a NUL-terminated string (and its first 8 bytes as a resource size for Range); properties
 * checked: ranges stay inside the resource, encode/decode round-trips.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    uint64_t res_size = 0, a, b;
    char *enc, *dec, *val;

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    memcpy(&res_size, data, size < sizeof(res_size) ? size : sizeof(res_size));
    if (size % 2)
        res_size %= 1000;

    (void)reference_name_valid(s, size);
    (void)reference_tag_valid(s, size);

    if (reference_parse_range(s, res_size, &a, &b) == REFERENCE_RANGE_OK) {
        if (a > b || b >= res_size)
            abort();
    }
    if (reference_parse_content_range(s, &a, &b) == 0 && a > b)
        abort();
    (void)reference_parse_uint(s, &a);

    val = reference_query_get(s, "n");
    if (val != NULL && strlen(val) > REFERENCE_QUERY_VALUE_MAX)
        abort();
    free(val);
    val = reference_query_get(s, "");
    free(val);
    char *ns;
    int has = reference_query_lookup(s, "ns", &ns);
    if ((has == 1) != (ns != NULL) || (ns && strlen(ns) > REFERENCE_QUERY_VALUE_MAX))
        abort();
    free(ns);

    if (reference_host_valid(s, size) && (memchr(s, '\0', size) || size > REFERENCE_HOST_MAX + 6))
        abort();

    dec = reference_url_decode(s, size);
    free(dec);

    enc = reference_url_encode(s);
    if (enc != NULL) {
        dec = reference_url_decode(enc, strlen(enc));
        if (dec == NULL || strcmp(dec, s) != 0)
            abort();
        free(dec);
    }
    free(enc);
    free(s);
    return 0;
}
