/*
 * The OSS driver's multipart uploads (parts, part copies, completion) and its writer, which
 * streams an object through them in parts of chunksize.
 */
#include "oss_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "ossxml.h"

/* ---- multipart ---- */

enum regerr oss_mp_initiate(struct oss_storage *o, const char *key, struct oss_multipart *mp)
{
    struct oss_call c = {
        .what = "InitiateMultipartUpload", .method = "POST", .key = key, .has_body = true};
    oss_add_query(&c, "uploads", "");
    oss_add_header(&c, "Content-Type", "application/octet-stream");
    oss_add_sse(o, &c);
    struct oss_resp r = {0};
    enum regerr result = oss_call(o, &c, &r);
    if (result == REG_OK &&
        (ossxml_find(buf_cstr(&r.body), r.body.len, "InitiateMultipartUploadResult/UploadId",
                     mp->upload_id, sizeof(mp->upload_id)) != 0 ||
         !mp->upload_id[0])) {
        log_error("oss: InitiateMultipartUpload %s: no UploadId in the answer", key);
        result = REG_ERR_INTERNAL;
    }
    buf_free(&r.body);
    return result;
}

static bool mp_add(struct oss_multipart *mp, const char *etag)
{
    if (buf_grow_items(&mp->etags, &mp->cap, mp->nparts + 1, sizeof(*mp->etags), OSS_MAX_PARTS) !=
        BUF_OK)
        return false;
    snprintf(mp->etags[mp->nparts++], 80, "%s", etag);
    return true;
}

/* Uploads part nparts+1: data, or (src_key != NULL) bytes [off, off+len) of src_key. */
static enum regerr mp_part(struct oss_storage *o, const char *key, struct oss_multipart *mp,
                           const void *data, size_t len, const char *src_key, uint64_t off,
                           uint64_t clen)
{
    if (mp->nparts >= OSS_MAX_PARTS) {
        log_error("oss: %s: over %d parts (raise chunksize)", key, OSS_MAX_PARTS);
        return REG_ERR_TOO_LARGE;
    }
    char num[16], md5[25], range[64];
    char *src = NULL;
    snprintf(num, sizeof(num), "%zu", mp->nparts + 1);
    struct oss_call c = {.what = src_key ? "UploadPartCopy" : "UploadPart",
                         .method = "PUT",
                         .key = key,
                         .body = data,
                         .body_len = len,
                         .has_body = true};
    oss_add_query(&c, "partNumber", num);
    oss_add_query(&c, "uploadId", mp->upload_id);
    if (src_key) {
        src = oss_copy_source(o, src_key);
        if (!src)
            return REG_ERR_INTERNAL;
        snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, off, off + clen - 1);
        oss_add_header(&c, "Content-Type", "application/octet-stream");
        oss_add_header(&c, "x-oss-copy-source", src);
        oss_add_header(&c, "x-oss-copy-source-range", range);
    } else {
        oss_md5_base64(data, len, md5);
        oss_add_header(&c, "Content-Type", "application/octet-stream");
        oss_add_header(&c, "Content-MD5", md5);
    }
    struct oss_resp r = {0};
    enum regerr result = oss_call(o, &c, &r);
    char etag[80];
    snprintf(etag, sizeof(etag), "%s", r.etag);
    if (result == REG_OK && !etag[0] && r.body.p)
        ossxml_find(r.body.p, r.body.len, "CopyPartResult/ETag", etag, sizeof(etag));
    if (result == REG_OK && !etag[0]) {
        log_error("oss: %s %s: no ETag in the answer", c.what, key);
        result = REG_ERR_INTERNAL;
    }
    if (result == REG_OK && !mp_add(mp, etag))
        result = REG_ERR_INTERNAL;
    buf_free(&r.body);
    free(src);
    return result;
}

/* Appends s to the buffer with XML escaping. */
static bool xml_append(struct buf *b, const char *s)
{
    for (; *s; s++) {
        const char *rep;
        char one[2] = {*s, '\0'};
        switch (*s) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        default:
            rep = one;
        }
        if (buf_append_str(b, rep) != BUF_OK)
            return false;
    }
    return true;
}

enum regerr oss_mp_complete(struct oss_storage *o, const char *key, struct oss_multipart *mp)
{
    /* bounded by construction: at most OSS_MAX_PARTS parts of one ETag each */
    struct buf xml = BUF_INIT(BUF_UNCAPPED);
    bool ok = buf_append_str(&xml, "<CompleteMultipartUpload>") == BUF_OK;
    for (size_t i = 0; ok && i < mp->nparts; i++)
        ok = buf_printf(&xml, "<Part><PartNumber>%zu</PartNumber><ETag>", i + 1) == BUF_OK &&
             xml_append(&xml, mp->etags[i]) && buf_append_str(&xml, "</ETag></Part>") == BUF_OK;
    ok = ok && buf_append_str(&xml, "</CompleteMultipartUpload>") == BUF_OK;
    if (!ok) {
        buf_free(&xml);
        return REG_ERR_INTERNAL;
    }
    char md5[25];
    oss_md5_base64(xml.p, xml.len, md5);
    struct oss_call c = {.what = "CompleteMultipartUpload",
                         .method = "POST",
                         .key = key,
                         .body = xml.p,
                         .body_len = xml.len,
                         .has_body = true};
    oss_add_query(&c, "uploadId", mp->upload_id);
    oss_add_header(&c, "Content-Type", "application/xml");
    oss_add_header(&c, "Content-MD5", md5);
    struct oss_resp r = {0};
    enum regerr result = oss_call(o, &c, &r);
    buf_free(&r.body);
    buf_free(&xml);
    return result;
}

void oss_mp_abort(struct oss_storage *o, const char *key, struct oss_multipart *mp)
{
    if (!mp->upload_id[0])
        return;
    struct oss_call c = {
        .what = "AbortMultipartUpload", .method = "DELETE", .key = key, .quiet = true};
    oss_add_query(&c, "uploadId", mp->upload_id);
    struct oss_resp r = {0};
    oss_call(o, &c, &r);
    buf_free(&r.body);
    mp->upload_id[0] = '\0';
}

void oss_mp_free(struct oss_multipart *mp)
{
    free(mp->etags);
    memset(mp, 0, sizeof(*mp));
}

/*
 * Copies [0, size) of src_key into the upload as parts of about part_max bytes: every part
 * at least part_max / 2 (so none is under OSS's minimum when part_max >= 200 KiB).
 */
enum regerr oss_mp_copy_parts(struct oss_storage *o, const char *key, struct oss_multipart *mp,
                              const char *src_key, uint64_t size, uint64_t part_max)
{
    uint64_t n = (size + part_max - 1) / part_max;
    uint64_t each = (size + n - 1) / n;
    enum regerr result = REG_OK;
    for (uint64_t off = 0; off < size && result == REG_OK; off += each) {
        uint64_t len = size - off < each ? size - off : each;
        result = mp_part(o, key, mp, NULL, 0, src_key, off, len);
    }
    return result;
}

/* The UploadPartCopy part size for a source: at least 2 chunks, at most OSS_MAX_PART. */
uint64_t oss_copy_part_size(const struct oss_storage *o, uint64_t size)
{
    uint64_t part = o->copy_limit;
    if (part < 2 * o->chunksize)
        part = 2 * o->chunksize;
    if (part < 2 * OSS_MIN_PART)
        part = 2 * OSS_MIN_PART;
    if (size / OSS_MAX_PARTS + 1 > part)
        part = size / OSS_MAX_PARTS + 1;
    return part > OSS_MAX_PART ? OSS_MAX_PART : part;
}

/* ---- the writer ---- */

struct oss_writer {
    struct storage_writer base;
    struct oss_storage *o;
    char *key;
    struct buf buf;    /* the part being filled, capped at chunksize */
    uint64_t size;     /* bytes the object holds at close */
    bool dirty;        /* close must write (else an append writer that wrote nothing) */
    uint64_t carry;    /* append: the object's bytes, carried over at the first write */
    enum regerr error; /* first failure; close then aborts */
    struct oss_multipart mp;
};

static enum regerr writer_flush_part(struct oss_writer *w)
{
    enum regerr result = REG_OK;
    if (!w->mp.upload_id[0])
        result = oss_mp_initiate(w->o, w->key, &w->mp);
    if (result == REG_OK)
        result = mp_part(w->o, w->key, &w->mp, w->buf.p, w->buf.len, NULL, 0, 0);
    if (result == REG_OK)
        buf_clear(&w->buf);
    return result;
}

/*
 * Append, at the first write: the object's current bytes (w->carry of them) come first. A
 * small object (up to chunksize) is read into the buffer; a larger one becomes the upload's
 * first parts by UploadPartCopy, so no byte of it travels through here. The object itself
 * changes only at close, and an append writer that writes nothing starts no upload at all.
 */
static enum regerr writer_carry(struct oss_writer *w)
{
    struct oss_storage *o = w->o;
    uint64_t size = w->carry;
    enum regerr result;
    if (size <= o->chunksize) {
        struct oss_call c = {.what = "GetObject",
                             .method = "GET",
                             .key = w->key,
                             .max_body = (size_t)o->chunksize,
                             .max_body_set = true};
        struct oss_resp r = {0};
        result = oss_call(o, &c, &r);
        if (result == REG_OK) {
            /* the answer becomes the part buffer (capped at chunksize as well: max_body) */
            w->buf = r.body;
            w->size = w->buf.len;
            r.body = BUF_INIT(0);
            if (w->buf.len != size)
                result = REG_ERR_INTERNAL; /* changed under us: the upload would be wrong */
        }
        buf_free(&r.body);
        return result;
    }
    result = oss_mp_initiate(o, w->key, &w->mp);
    if (result == REG_OK)
        result = oss_mp_copy_parts(o, w->key, &w->mp, w->key, size, oss_copy_part_size(o, size));
    if (result != REG_OK)
        oss_mp_abort(o, w->key, &w->mp);
    return result;
}

static enum regerr oss_writer_write(struct storage_writer *base, const void *data, size_t len)
{
    struct oss_writer *w = (struct oss_writer *)base;
    const char *p = data;
    if (w->error)
        return w->error;
    if (len && w->carry) {
        enum regerr result = writer_carry(w);
        w->carry = 0;
        if (result != REG_OK) {
            w->error = result;
            return result;
        }
    }
    if (len)
        w->dirty = true;
    while (len > 0) {
        size_t chunk = (size_t)w->o->chunksize;
        if (w->buf.len == chunk) {
            enum regerr result = writer_flush_part(w);
            if (result != REG_OK) {
                w->error = result;
                return result;
            }
        }
        size_t n = chunk - w->buf.len < len ? chunk - w->buf.len : len;
        /* grows by doubling up to chunksize: small writers stay small */
        if (buf_append(&w->buf, p, n) != BUF_OK) {
            w->error = REG_ERR_INTERNAL;
            return w->error;
        }
        w->size += n;
        p += n;
        len -= n;
    }
    return REG_OK;
}

static uint64_t oss_writer_size(const struct storage_writer *base)
{
    return ((const struct oss_writer *)base)->size;
}

static void oss_writer_free(struct oss_writer *w)
{
    oss_mp_free(&w->mp);
    buf_free(&w->buf);
    free(w->key);
    free(w);
}

static enum regerr oss_writer_close(struct storage_writer *base)
{
    struct oss_writer *w = (struct oss_writer *)base;
    struct oss_storage *o = w->o;
    enum regerr result = w->error;
    if (result == REG_OK && w->dirty) {
        if (!w->mp.upload_id[0]) {
            /* everything fits one request */
            char md5[25];
            oss_md5_base64(buf_cstr(&w->buf), w->buf.len, md5);
            struct oss_call c = {.what = "PutObject",
                                 .method = "PUT",
                                 .key = w->key,
                                 .body = w->buf.p,
                                 .body_len = w->buf.len,
                                 .has_body = true};
            oss_add_header(&c, "Content-Type", "application/octet-stream");
            oss_add_header(&c, "Content-MD5", md5);
            oss_add_sse(o, &c);
            struct oss_resp r = {0};
            result = oss_call(o, &c, &r);
            buf_free(&r.body);
        } else {
            if (w->buf.len > 0)
                result = writer_flush_part(w);
            if (result == REG_OK)
                result = oss_mp_complete(o, w->key, &w->mp);
        }
    }
    if (result != REG_OK)
        oss_mp_abort(o, w->key, &w->mp);
    oss_writer_free(w);
    return result;
}

static const struct storage_writer_ops oss_writer_ops = {
    .write = oss_writer_write,
    .size = oss_writer_size,
    .close = oss_writer_close,
};

enum regerr oss_open_writer(struct storage *s, const char *path, bool append,
                            struct storage_writer **out)
{
    struct oss_storage *o = (struct oss_storage *)s;
    OSS_KEY(o, path, key);
    if (!*key)
        return REG_ERR_INTERNAL;
    struct oss_writer *w = calloc(1, sizeof(*w));
    if (!w || !(w->key = strdup(key))) {
        free(w);
        return REG_ERR_INTERNAL;
    }
    w->base.ops = &oss_writer_ops;
    w->o = o;
    w->buf = BUF_INIT((size_t)o->chunksize);
    w->dirty = !append; /* truncate: close writes even when nothing was written */
    enum regerr result = REG_OK;
    if (append) {
        uint64_t size = 0;
        result = oss_head_object(o, w->key, &size, NULL, NULL, 0);
        if (result == REG_ERR_NOT_FOUND) {
            w->dirty = true; /* as O_CREAT: close creates it, empty if nothing was written */
            result = REG_OK;
        } else if (result == REG_OK) {
            w->carry = size;
            w->size = size;
        }
    }
    if (result != REG_OK) {
        oss_writer_free(w);
        return result;
    }
    *out = &w->base;
    return REG_OK;
}
