/*
 * libFuzzer target for ratelimit_parse: no crash, a refused value leaves a zeroed result, an
 * accepted one is within the limits and its first item written back as "N;w=S" (or "N")
 * parses to the same numbers. The same bytes fed to the record as headers never leave it
 * half updated.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ratelimit_value v;
    int rc = ratelimit_parse((const char *)data, size, &v);
    if (rc != 0 && rc != -1)
        abort();
    if (rc == -1 && (v.count != 0 || v.window_s != 0))
        abort();
    if (rc == 0) {
        if (v.count < 0 || v.count > RATELIMIT_COUNT_MAX || v.window_s < 0 ||
            v.window_s > RATELIMIT_WINDOW_MAX || size > RATELIMIT_VALUE_MAX)
            abort();
        char back[64];
        int n = v.window_s ? snprintf(back, sizeof(back), "%ld;w=%ld", v.count, v.window_s)
                           : snprintf(back, sizeof(back), "%ld", v.count);
        struct ratelimit_value again;
        if (n < 0 || ratelimit_parse(back, (size_t)n, &again) != 0 || again.count != v.count ||
            again.window_s != v.window_s)
            abort();
    }

    /* As header values (NUL-terminated), split at the first NUL of the input. */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    const char *second = text + strlen(text);
    if (second < text + size)
        second++;
    struct ratelimit rl = {0};
    bool noted = ratelimit_note(&rl, text, second, second, 1000);
    if (noted != rl.known || (noted && (rl.limit < 0 || rl.remaining < 0)))
        abort();
    if (memchr(rl.source, '\0', sizeof(rl.source)) == NULL)
        abort();
    free(text);
    return 0;
}
