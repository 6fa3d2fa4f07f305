/*
 * libFuzzer target for manifest_parse and manifest_accepts. The first input byte picks the
 * Content-Type, the rest is the body. The same bytes, split at newlines, also serve as Accept
 * header lines. Checked: a parsed manifest is complete, a refused one leaves nothing behind.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "manifest.h"

static const char *const content_types[] = {
    NULL,
    MANIFEST_MT_OCI_MANIFEST,
    MANIFEST_MT_OCI_INDEX,
    MANIFEST_MT_DOCKER_V2,
    MANIFEST_MT_DOCKER_LIST,
    MANIFEST_MT_DOCKER_V1_SIGNED,
    "application/json",
    MANIFEST_MT_OCI_MANIFEST "; charset=utf-8",
};

#define NTYPES (sizeof(content_types) / sizeof(content_types[0]))
#define MAX_LINES 16

static void check_parsed(const struct manifest *m)
{
    size_t i;

    if (m->media_type == NULL || (m->nlayers > 0) != (m->layers != NULL))
        abort();
    if (m->has_config && (m->config.media_type == NULL || m->config.size < 0))
        abort();
    for (i = 0; i < m->nlayers; i++) {
        if (m->layers[i].media_type == NULL || m->layers[i].size < 0)
            abort();
    }
    if (m->has_subject && m->subject.media_type == NULL)
        abort();
}

static void fuzz_accepts(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    const char *lines[MAX_LINES];
    size_t n = 0;
    char *p;

    if (copy == NULL)
        return;
    memcpy(copy, data, size);
    copy[size] = '\0';
    p = copy;
    while (n < MAX_LINES) {
        char *nl = strchr(p, '\n');

        lines[n++] = p;
        if (nl == NULL)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    (void)manifest_accepts(lines, n, MANIFEST_MT_OCI_INDEX);
    (void)manifest_accepts(lines, n, MANIFEST_MT_DOCKER_V2);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct manifest m;
    char err[256];
    enum regerr result;

    if (size == 0)
        return 0;
    result = manifest_parse((const char *)data + 1, size - 1, content_types[data[0] % NTYPES], &m,
                            err, sizeof(err));
    if (result == REG_OK)
        check_parsed(&m);
    else if (m.media_type != NULL || m.layers != NULL || m.nlayers != 0 || err[0] == '\0')
        abort();
    manifest_free(&m);

    fuzz_accepts(data, size);
    return 0;
}
