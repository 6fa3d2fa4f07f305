#include "spools.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "reference.h"
#include "registry.h"

#define SPOOLS_DIR "regmirror-spools"

struct spools {
    int base; /* <rootdirectory>/regmirror-spools */
    int own;  /* this instance's directory, flock'd */
    char name[40];
};

/* Upload ids as registry_upload_start makes them: a UUID, no path characters. */
static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 36)
        return false;
    for (const char *c = id; *c; c++) {
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f') || *c == '-'))
            return false;
    }
    return true;
}

/* Cancels every session instance directory dfd lists and removes its notes; the count. */
static size_t reap_instance(int dfd, struct registry *reg)
{
    size_t n = 0;
    int lfd = dup(dfd);
    DIR *d = lfd >= 0 ? fdopendir(lfd) : NULL;
    struct dirent *e;
    if (!d) {
        if (lfd >= 0)
            close(lfd);
        return 0;
    }
    while ((e = readdir(d)) != NULL) {
        char repo[REFERENCE_NAME_MAX + 2];
        if (e->d_name[0] == '.')
            continue;
        int fd = openat(dfd, e->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        ssize_t len = fd >= 0 ? read(fd, repo, sizeof(repo) - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (len > 0 && id_ok(e->d_name) && reference_name_valid(repo, (size_t)len)) {
            repo[len] = '\0';
            if (registry_upload_cancel(reg, repo, e->d_name) == REG_OK)
                n++;
        }
        unlinkat(dfd, e->d_name, 0);
    }
    closedir(d);
    return n;
}

/* Reaps every instance directory whose owner is gone (its lock can be taken). */
static void reap_dead(int base, struct registry *reg)
{
    int lfd = dup(base);
    DIR *d = lfd >= 0 ? fdopendir(lfd) : NULL;
    struct dirent *e;
    size_t sessions = 0, instances = 0;
    if (!d) {
        if (lfd >= 0)
            close(lfd);
        return;
    }
    while ((e = readdir(d)) != NULL) {
        /* Dot names are instances still setting up (see spools_open). */
        if (e->d_name[0] == '.')
            continue;
        int dfd = openat(base, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (dfd < 0)
            continue;
        if (flock(dfd, LOCK_EX | LOCK_NB) == 0) {
            sessions += reap_instance(dfd, reg);
            instances++;
            unlinkat(base, e->d_name, AT_REMOVEDIR);
        }
        close(dfd);
    }
    closedir(d);
    if (instances)
        log_info("proxy: removed %zu pull-through spool(s) left by %zu stopped instance(s)",
                 sessions, instances);
}

struct spools *spools_open(const char *rootdir, struct registry *reg)
{
    char path[PATH_MAX], tmp[48];
    unsigned char r[8];
    struct spools *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->base = s->own = -1;
    int n = snprintf(path, sizeof(path), "%s/" SPOOLS_DIR, rootdir);
    if (n < 0 || (size_t)n >= sizeof(path))
        goto fail;
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        goto fail;
    s->base = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->base < 0)
        goto fail;
    reap_dead(s->base, reg);
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
        goto fail;
    snprintf(s->name, sizeof(s->name), "%02x%02x%02x%02x%02x%02x%02x%02x-%ld", r[0], r[1], r[2],
             r[3], r[4], r[5], r[6], r[7], (long)getpid());
    /* Locked under a dot name first, so that no other starting instance takes it for a dead
     * one between the mkdir and the flock; the lock follows the rename. */
    snprintf(tmp, sizeof(tmp), ".%s", s->name);
    if (mkdirat(s->base, tmp, 0755) != 0)
        goto fail;
    s->own = openat(s->base, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->own < 0 || flock(s->own, LOCK_EX | LOCK_NB) != 0 ||
        renameat(s->base, tmp, s->base, s->name) != 0) {
        unlinkat(s->base, tmp, AT_REMOVEDIR);
        goto fail;
    }
    return s;
fail:
    log_warn("proxy: cannot keep a record of pull-through spools under %s: %s (what a killed "
             "instance spooled stays until storage.maintenance.uploadpurging removes it)",
             path, strerror(errno));
    spools_close(s);
    return NULL;
}

void spools_add(struct spools *s, const char *name, const char *id)
{
    if (!s)
        return;
    int fd = openat(s->own, id, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(name);
    if (fd < 0 || write(fd, name, len) != (ssize_t)len)
        log_warn("proxy: cannot record the spool %s: %s", id, strerror(errno));
    if (fd >= 0)
        close(fd);
}

void spools_drop(struct spools *s, const char *id)
{
    if (s && id[0])
        unlinkat(s->own, id, 0);
}

void spools_close(struct spools *s)
{
    if (!s)
        return;
    if (s->own >= 0) {
        /* Removed only when empty: a note left over is reaped at the next start. */
        unlinkat(s->base, s->name, AT_REMOVEDIR);
        close(s->own);
    }
    if (s->base >= 0)
        close(s->base);
    free(s);
}
