/* libFuzzer target for digest_parse: no crash, and whatever parses prints back identically. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct digest d, back, hashed;
    char buf[DIGEST_STR_MAX];
    int rc = digest_parse((const char *)data, size, &d);

    if (rc == 0) {
        digest_str(&d, buf);
        if (strlen(buf) != size || memcmp(buf, data, size) != 0)
            abort();
        if (digest_parse(buf, strlen(buf), &back) != 0 || !digest_equal(&d, &back))
            abort();
    } else if (rc != -1 && rc != -2) {
        abort();
    }

    static const enum digest_algo algos[] = {DIGEST_SHA256, DIGEST_SHA384, DIGEST_SHA512};
    for (size_t i = 0; i < sizeof(algos) / sizeof(algos[0]); i++) {
        if (digest_compute(algos[i], data, size, &hashed) != 0)
            abort();
        digest_str(&hashed, buf);
        if (strlen(hashed.hex) != digest_hex_len(algos[i]) ||
            digest_parse(buf, strlen(buf), &back) != 0 || !digest_equal(&hashed, &back))
            abort();
    }
    return 0;
}
