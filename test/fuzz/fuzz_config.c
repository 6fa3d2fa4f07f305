/*
 * libFuzzer target for the configuration reader. The input is a config.yml; when it contains a
 * line "#ENV", the lines after it are used as the environment ("REGISTRY_HTTP_ADDR=:1"), so the
 * override code is fuzzed too. A configuration that loads must print as YAML that loads again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define MAX_ENV 64

static void check_reload(const struct config *cfg)
{
    struct config again;
    struct config_diag d;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    if (!f)
        return;
    config_print(cfg, f);
    fclose(f);
    if (config_load_string(text, len, "printed", NULL, &again, &d) != 0) {
        for (size_t i = 0; i < d.nerrors; i++)
            fprintf(stderr, "reload error: %s\n", d.errors[i]);
        fprintf(stderr, "printed:\n%s", text);
        abort();
    }
    config_free(&again);
    config_diag_free(&d);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    char *env[MAX_ENV + 1];
    size_t nenv = 0, yaml_len = size;
    struct config cfg;
    struct config_diag d;
    char *marker;

    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    marker = strstr(buf, "\n#ENV\n");
    if (marker && (size_t)(marker - buf) + 6 <= size && !memchr(buf, '\0', size)) {
        char *line = marker + 6;
        yaml_len = (size_t)(marker - buf) + 1;
        while (line && *line && nenv < MAX_ENV) {
            char *nl = strchr(line, '\n');
            if (nl)
                *nl = '\0';
            env[nenv++] = line;
            line = nl ? nl + 1 : NULL;
        }
    }
    env[nenv] = NULL;
    if (config_load_string(buf, yaml_len, "fuzz.yml", nenv ? env : NULL, &cfg, &d) == 0)
        check_reload(&cfg);
    config_free(&cfg);
    config_diag_free(&d);
    free(buf);
    return 0;
}
