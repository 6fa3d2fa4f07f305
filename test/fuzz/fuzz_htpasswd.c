/*
 * libFuzzer target for the two parsers of outside input in auth: the htpasswd file
 * (auth_htpasswd_parse) and the Authorization header (auth_basic_parse). The first byte picks
 * the parser. Checks: no crash; a parsed file has sorted, unique, NUL-free users within the
 * limits and only hash kinds we verify; the error message never holds a hash; parsed Basic
 * credentials are NUL-terminated within their buffers and encode back to the same header.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "log.h"

static void check_file(const char *text, size_t len)
{
    struct auth_entries e;
    char err[256];
    err[0] = '\0';
    int rc = auth_htpasswd_parse(text, len, &e, err, sizeof(err));
    if (rc != 0) {
        if (rc != -1 || e.v || e.n || !err[0])
            abort();
        return;
    }
    for (size_t i = 0; i < e.n; i++) {
        const char *u = e.v[i].user, *h = e.v[i].hash;
        if (!u[0] || strlen(u) >= AUTH_USER_MAX || strchr(u, ':'))
            abort();
        if (i > 0 && strcmp(e.v[i - 1].user, u) >= 0)
            abort();
        if (strncmp(h, "$2", 2) != 0 && strncmp(h, "$5$", 3) != 0 && strncmp(h, "$6$", 3) != 0)
            abort();
    }
    auth_entries_free(&e);
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void check_basic(const char *hdr)
{
    char user[AUTH_USER_MAX], pass[AUTH_PASS_MAX];
    if (auth_basic_parse(hdr, user, sizeof(user), pass, sizeof(pass)) != 0)
        return;
    if (!memchr(user, '\0', sizeof(user)) || !memchr(pass, '\0', sizeof(pass)))
        abort();
    if (strchr(user, ':'))
        abort();
    /* encode user:pass and parse again: the same pair */
    char plain[AUTH_USER_MAX + AUTH_PASS_MAX + 1];
    int n = snprintf(plain, sizeof(plain), "%s:%s", user, pass);
    if (n < 0 || (size_t)n >= sizeof(plain))
        abort();
    char enc[6 + 4 * (sizeof(plain) / 3 + 1) + 1] = "Basic ";
    size_t o = 6;
    for (int i = 0; i < n; i += 3) {
        unsigned v = (unsigned char)plain[i] << 16;
        if (i + 1 < n)
            v |= (unsigned char)plain[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)plain[i + 2];
        enc[o++] = b64[(v >> 18) & 63];
        enc[o++] = b64[(v >> 12) & 63];
        enc[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        enc[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    enc[o] = '\0';
    char u2[AUTH_USER_MAX], p2[AUTH_PASS_MAX];
    if (strlen(enc) <= AUTH_HEADER_MAX) {
        if (auth_basic_parse(enc, u2, sizeof(u2), p2, sizeof(p2)) != 0)
            abort();
        if (strcmp(u2, user) != 0 || strcmp(p2, pass) != 0)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        log_setup(LOG_ERROR, LOG_FORMAT_TEXT);
        quiet = 1;
    }
    if (size == 0)
        return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    if (data[0] & 1) {
        check_file(text, len);
    } else {
        char *hdr = malloc(len + 1);
        if (!hdr)
            return 0;
        memcpy(hdr, text, len);
        hdr[len] = '\0';
        check_basic(hdr);
        free(hdr);
    }
    return 0;
}
