/* Route parsing of request paths. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *path = malloc(size + 1);
    if (!path)
        return 0;
    memcpy(path, data, size);
    path[size] = '\0';
    struct api_route rt;
    if (api_route_parse(path, &rt) == REG_OK) {
        /* A parsed route never carries an unterminated or over-long part. */
        if (strlen(rt.name) >= sizeof(rt.name) || strlen(rt.ref) >= sizeof(rt.ref))
            abort();
    }
    free(path);
    return 0;
}
