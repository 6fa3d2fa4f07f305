/*
 * libFuzzer target for admin_ref_parse (the references of the cache admin routes and
 * `regmirror cache`). Properties checked: an accepted reference splits into a valid name and
 * a valid tag or digest, and joining them again gives the input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "reference.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[API_NAME_MAX], ref[API_REF_MAX], joined[API_NAME_MAX + API_REF_MAX + 2];
    const char *why = NULL;
    if (admin_ref_parse((const char *)data, size, name, ref, &why) != REG_OK) {
        if (!why || !*why)
            abort();
        return 0;
    }
    bool digest = digest_parse(ref, strlen(ref), NULL) == 0;
    if (!reference_name_valid(name, strlen(name)) ||
        (!digest && !reference_tag_valid(ref, strlen(ref))))
        abort();
    size_t n = (size_t)snprintf(joined, sizeof(joined), "%s%c%s", name, digest ? '@' : ':', ref);
    if (n != size || memcmp(joined, data, size) != 0)
        abort();
    return 0;
}
