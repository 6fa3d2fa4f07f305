#ifndef REGMIRROR_CLI_CACHE_H
#define REGMIRROR_CLI_CACHE_H
/*
 * cli_cache: `regmirror cache ls|rm|verify|warm CONFIG ...`, the command line of the cache
 * admin (admin.h). It talks to the running daemon's debug listener (http.debug.addr of
 * CONFIG, credentials from --user or REGMIRROR_ADMIN_USER when auth.htpasswd is on), or with
 * --offline reads and changes the store itself (inventory.h; the daemon should be stopped
 * then). verify and warm draw a progress bar on a terminal, plain lines otherwise.
 */
#include "config.h"
#include "storage.h"

/* What main.c lends the command: its config loader (printing diagnostics) and the driver. */
struct cli_cache_env {
    int (*load_config)(const char *path, struct config *cfg);
    struct storage *(*open_storage)(const struct config *cfg);
};

/* argv after "cache". The process exit code: 0, 1 (a failure, said on stderr), 2 (usage). */
int cli_cache_main(int argc, char **argv, const struct cli_cache_env *env);

#endif
