#include "regerr.h"

static const struct {
    const char *code;
    int status;
    const char *message;
} table[REG_ERR__COUNT] = {
    [REG_OK] = {"OK", 200, "ok"},
    [REG_ERR_INTERNAL] = {"UNKNOWN", 500, "unknown error"},
    [REG_ERR_UNAVAILABLE] = {"UNAVAILABLE", 503, "service unavailable"},
    [REG_ERR_BLOB_UNKNOWN] = {"BLOB_UNKNOWN", 404, "blob unknown to registry"},
    [REG_ERR_BLOB_UPLOAD_INVALID] = {"BLOB_UPLOAD_INVALID", 400, "blob upload invalid"},
    [REG_ERR_BLOB_UPLOAD_UNKNOWN] = {"BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"},
    [REG_ERR_DIGEST_INVALID] = {"DIGEST_INVALID", 400,
                                "provided digest did not match uploaded content"},
    [REG_ERR_MANIFEST_BLOB_UNKNOWN] =
        {"MANIFEST_BLOB_UNKNOWN", 400,
         "manifest references a manifest or blob unknown to registry"},
    [REG_ERR_MANIFEST_INVALID] = {"MANIFEST_INVALID", 400, "manifest invalid"},
    [REG_ERR_MANIFEST_UNKNOWN] = {"MANIFEST_UNKNOWN", 404, "manifest unknown"},
    [REG_ERR_NAME_INVALID] = {"NAME_INVALID", 400, "invalid repository name"},
    [REG_ERR_NAME_UNKNOWN] = {"NAME_UNKNOWN", 404, "repository name not known to registry"},
    [REG_ERR_SIZE_INVALID] = {"SIZE_INVALID", 400, "provided length did not match content length"},
    [REG_ERR_TAG_INVALID] = {"TAG_INVALID", 400, "manifest tag did not match URI"},
    [REG_ERR_RANGE_INVALID] = {"RANGE_INVALID", 416, "invalid content range"},
    [REG_ERR_UNAUTHORIZED] = {"UNAUTHORIZED", 401, "authentication required"},
    [REG_ERR_DENIED] = {"DENIED", 403, "requested access to the resource is denied"},
    [REG_ERR_UNSUPPORTED] = {"UNSUPPORTED", 405, "The operation is unsupported."},
    [REG_ERR_TOOMANYREQUESTS] = {"TOOMANYREQUESTS", 429, "too many requests"},
    [REG_ERR_PAGINATION_NUMBER_INVALID] = {"PAGINATION_NUMBER_INVALID", 400,
                                           "invalid number of results requested"},
    [REG_ERR_TOO_LARGE] = {"SIZE_INVALID", 413, "request body too large"},
    [REG_ERR_NOT_FOUND] = {"NOT_FOUND", 404, "not found"},
    [REG_ERR_BAD_GATEWAY] = {"UNKNOWN", 502, "the upstream registry's answer cannot be used"},
    /* The spec has no codes for these; UNSUPPORTED and SIZE_INVALID come closest. */
    [REG_ERR_BAD_REQUEST] = {"UNSUPPORTED", 400, "malformed request"},
    [REG_ERR_TIMEOUT] = {"UNKNOWN", 408, "the request head did not arrive in time"},
    [REG_ERR_URI_TOO_LONG] = {"UNSUPPORTED", 414, "request target too long"},
    [REG_ERR_HEADERS_TOO_LARGE] = {"SIZE_INVALID", 431, "request header fields too large"},
    [REG_ERR_NOT_IMPLEMENTED] = {"UNSUPPORTED", 501, "transfer coding not implemented"},
    [REG_ERR_HTTP_VERSION] = {"UNSUPPORTED", 505, "HTTP version not supported"},
};

static int valid(enum regerr e)
{
    return (int)e >= 0 && e < REG_ERR__COUNT;
}

const char *regerr_code(enum regerr e)
{
    return valid(e) ? table[e].code : "UNKNOWN";
}

int regerr_status(enum regerr e)
{
    return valid(e) ? table[e].status : 500;
}

const char *regerr_message(enum regerr e)
{
    return valid(e) ? table[e].message : "unknown error";
}

enum regerr regerr_from_http_status(int status)
{
    switch (status) {
    case 400:
        return REG_ERR_BAD_REQUEST;
    case 408:
        return REG_ERR_TIMEOUT;
    case 413:
        return REG_ERR_TOO_LARGE;
    case 414:
        return REG_ERR_URI_TOO_LONG;
    case 431:
        return REG_ERR_HEADERS_TOO_LARGE;
    case 501:
        return REG_ERR_NOT_IMPLEMENTED;
    case 503:
        return REG_ERR_UNAVAILABLE;
    case 505:
        return REG_ERR_HTTP_VERSION;
    default:
        return REG_ERR_INTERNAL;
    }
}
