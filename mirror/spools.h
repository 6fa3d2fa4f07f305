#ifndef REGMIRROR_SPOOLS_H
#define REGMIRROR_SPOOLS_H
/*
 * spools: the pull-through fetches of this process on a filesystem store, recorded so that
 * the next start removes what a killed process left. On the filesystem a fetch spools into
 * an upload session of the store (<name>/_uploads/<id>, committed with a rename), which
 * nobody can resume once its process is gone; client upload sessions look the same there
 * and must stay for resumable pushes, so the proxy keeps a note of its own:
 *
 *   <rootdirectory>/regmirror-spools/<instance>/<upload id>   (content: the repository name)
 *
 * Each running instance holds an exclusive flock on its <instance> directory; one that can
 * be locked belongs to a process that is gone. Start-up removes the sessions such
 * directories list, then the directories: the work is the leftover fetches only, never a
 * walk of the store. Several instances may serve one store.
 *
 * Not thread-safe: the loop thread (the filesystem store's calls run there).
 */
struct registry;
struct spools;

/*
 * Removes what dead instances left (through reg, logged) and opens this process's record.
 * Returns NULL when the record cannot be kept (logged once; fetches work on, unrecorded).
 */
struct spools *spools_open(const char *rootdir, struct registry *reg);

/* A fetch started session id of repository name; a no-op on NULL. */
void spools_add(struct spools *s, const char *name, const char *id);

/* Session id ended (committed or cancelled); a no-op on NULL. */
void spools_drop(struct spools *s, const char *id);

/* Releases the record (removing it when empty); takes NULL. */
void spools_close(struct spools *s);

#endif
