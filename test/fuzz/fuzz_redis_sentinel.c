/*
 * libFuzzer target for what a sentinel (or a server) says back: the input is RESP bytes, read
 * with hiredis's reader, each whole reply given to the master-address parser, the ROLE check
 * and the stale-error check. No crash; a named master has a printable host that fits and a
 * port in 1..65535; the parser is deterministic. Inputs that declare a huge aggregate are
 * skipped: hiredis 0.14's reader allocates the declared element count up front.
 */
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "redis_sentinel.h"

static bool huge_aggregate(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i + 1 < size; i++) {
        if (data[i] != '*' || (i > 0 && data[i - 1] != '\n'))
            continue;
        long n = 0;
        for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9' && n <= 1024; j++)
            n = n * 10 + (data[j] - '0');
        if (n > 1024)
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    redisReader *rd;
    void *reply = NULL;

    if (huge_aggregate(data, size) || !(rd = redisReaderCreate()))
        return 0;
    redisReaderFeed(rd, (const char *)data, size);
    while (redisReaderGetReply(rd, &reply) == REDIS_OK && reply) {
        const redisReply *r = reply;
        char host[REDIS_SENTINEL_HOST_MAX], again[REDIS_SENTINEL_HOST_MAX];
        int port = 0, port2 = 0;
        enum redis_sentinel_answer a = redis_sentinel_parse_master(r, host, sizeof(host), &port);
        if (a != redis_sentinel_parse_master(r, again, sizeof(again), &port2))
            abort();
        if (a == REDIS_SENTINEL_MASTER) {
            size_t n = strlen(host);
            if (n == 0 || n >= sizeof(host) || port < 1 || port > 65535 || port != port2 ||
                strcmp(host, again) != 0)
                abort();
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)host[i] <= ' ' || (unsigned char)host[i] >= 0x7f)
                    abort();
        }
        (void)redis_sentinel_role_is_master(r);
        if (r->type == REDIS_REPLY_ERROR)
            (void)redis_sentinel_stale_error(r->str, r->len);
        freeReplyObject(reply);
        reply = NULL;
    }
    redisReaderFree(rd);
    return 0;
}
