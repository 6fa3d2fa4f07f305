/*
 * libFuzzer target for the token realm rule: the input is "<upstream url>\n<realm url>". No
 * crash; an upstream the rule can describe always qualifies as its own realm; the rule is
 * deterministic.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "realm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    char rule[320];

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    char *realm = strchr(s, '\n');
    if (realm)
        *realm++ = '\0';
    else
        realm = s;
    bool may = realm_may_get_credentials(s, realm);
    if (may != realm_may_get_credentials(s, realm))
        abort();
    if (realm_describe(s, rule, sizeof(rule)) == 0 && !realm_may_get_credentials(s, s))
        abort();
    if (realm_describe(realm, rule, sizeof(rule)) == 0 && !realm_may_get_credentials(realm, realm))
        abort();
    free(s);
    return 0;
}
