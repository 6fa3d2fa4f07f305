#include "layout.h"

#include <stdio.h>

#define ROOT "/docker/registry/v2"

char *layout_blob_dir(char *buf, const struct digest *d)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/blobs/%s/%.2s/%s", digest_algo_name(d->algo), d->hex,
             d->hex);
    return buf;
}

char *layout_blob_data(char *buf, const struct digest *d)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/blobs/%s/%.2s/%s/data", digest_algo_name(d->algo), d->hex,
             d->hex);
    return buf;
}

char *layout_repositories(char *buf)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories");
    return buf;
}

char *layout_repo(char *buf, const char *name)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s", name);
    return buf;
}

char *layout_layer_link(char *buf, const char *name, const struct digest *d)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_layers/%s/%s/link", name,
             digest_algo_name(d->algo), d->hex);
    return buf;
}

char *layout_revision_link(char *buf, const char *name, const struct digest *d)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_manifests/revisions/%s/%s/link", name,
             digest_algo_name(d->algo), d->hex);
    return buf;
}

char *layout_revisions_dir(char *buf, const char *name, enum digest_algo algo)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_manifests/revisions/%s", name,
             digest_algo_name(algo));
    return buf;
}

char *layout_tags_dir(char *buf, const char *name)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_manifests/tags", name);
    return buf;
}

char *layout_tag_dir(char *buf, const char *name, const char *tag)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_manifests/tags/%s", name, tag);
    return buf;
}

char *layout_tag_current(char *buf, const char *name, const char *tag)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_manifests/tags/%s/current/link", name,
             tag);
    return buf;
}

char *layout_tag_index_link(char *buf, const char *name, const char *tag, const struct digest *d)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_manifests/tags/%s/index/%s/%s/link",
             name, tag, digest_algo_name(d->algo), d->hex);
    return buf;
}

char *layout_upload_dir(char *buf, const char *name, const char *id)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_uploads/%s", name, id);
    return buf;
}

char *layout_upload_data(char *buf, const char *name, const char *id)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_uploads/%s/data", name, id);
    return buf;
}

char *layout_upload_startedat(char *buf, const char *name, const char *id)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_uploads/%s/startedat", name, id);
    return buf;
}

char *layout_proxy_tag(char *buf, const char *name, const char *tag)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_proxy/tags/%s", name, tag);
    return buf;
}

char *layout_proxy_pulled(char *buf, const char *name, const struct digest *d)
{
    snprintf(buf, LAYOUT_PATH_MAX, ROOT "/repositories/%s/_proxy/pulled/%s/%s", name,
             digest_algo_name(d->algo), d->hex);
    return buf;
}
