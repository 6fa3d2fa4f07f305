#ifndef REGMIRROR_REGERR_H
#define REGMIRROR_REGERR_H
/*
 * regerr: the one vocabulary of outcomes. Functions that can fail return enum regerr
 * (REG_OK == 0); the API layer maps it to the HTTP status and the OCI error code in one
 * place (regerr_status, regerr_code). Messages travel in struct regerr_info when a caller
 * needs detail.
 */
#include <stddef.h>

enum regerr {
    REG_OK = 0,
    REG_ERR_INTERNAL,    /* 500, an unexpected failure (I/O error, allocation) */
    REG_ERR_UNAVAILABLE, /* 503, storage or upstream not reachable */
    REG_ERR_BLOB_UNKNOWN,
    REG_ERR_BLOB_UPLOAD_INVALID,
    REG_ERR_BLOB_UPLOAD_UNKNOWN,
    REG_ERR_DIGEST_INVALID,
    REG_ERR_MANIFEST_BLOB_UNKNOWN,
    REG_ERR_MANIFEST_INVALID,
    REG_ERR_MANIFEST_UNKNOWN,
    REG_ERR_NAME_INVALID,
    REG_ERR_NAME_UNKNOWN,
    REG_ERR_SIZE_INVALID,
    REG_ERR_TAG_INVALID,
    REG_ERR_RANGE_INVALID, /* 416 */
    REG_ERR_UNAUTHORIZED,
    REG_ERR_DENIED,
    REG_ERR_UNSUPPORTED, /* 405 for disabled deletes, 400 otherwise via status override */
    REG_ERR_TOOMANYREQUESTS,
    REG_ERR_PAGINATION_NUMBER_INVALID,
    REG_ERR_TOO_LARGE,   /* 413, body over a limit */
    REG_ERR_NOT_FOUND,   /* storage-level "no such path"; mapped by the caller */
    REG_ERR_BAD_GATEWAY, /* 502, the upstream's answer cannot be used (wrong bytes,
                            a length or size that does not parse) */
    /* Requests the HTTP layer rejects before they parse (regerr_from_http_status). */
    REG_ERR_BAD_REQUEST,       /* 400, malformed framing */
    REG_ERR_TIMEOUT,           /* 408, the head did not arrive in time */
    REG_ERR_URI_TOO_LONG,      /* 414 */
    REG_ERR_HEADERS_TOO_LARGE, /* 431 */
    REG_ERR_NOT_IMPLEMENTED,   /* 501, a transfer coding other than chunked */
    REG_ERR_HTTP_VERSION,      /* 505 */
    REG_ERR__COUNT
};

/* "BLOB_UNKNOWN" etc. as the spec spells it. */
const char *regerr_code(enum regerr e);
/* The HTTP status the spec assigns to the error. */
int regerr_status(enum regerr e);
/* Default human message for the error body. */
const char *regerr_message(enum regerr e);
/* The error for a status the HTTP layer answers itself (see http_server_handler.on_error). */
enum regerr regerr_from_http_status(int status);

#endif
