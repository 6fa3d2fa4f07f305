#ifndef REGMIRROR_LOG_H
#define REGMIRROR_LOG_H
/*
 * log: leveled log lines to stderr, in text or json, with the fixed fields from config
 * (log.fields) on every line and optional per-line key/value fields.
 *
 * Not thread-safe by design: only the event-loop thread logs.
 * Strings passed in are copied; the caller keeps ownership.
 */
#include <stdarg.h>
#include <stdbool.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON };

/* Returns 0 and sets *out for "error", "warn", "info", "debug"; -1 otherwise. */
int log_level_parse(const char *s, enum log_level *out);

void log_setup(enum log_level level, enum log_format format);
/* Adds a field printed on every line (config log.fields). */
void log_add_field(const char *key, const char *value);
/* Frees the fields; logging stays usable with no fields. */
void log_reset(void);
bool log_enabled(enum log_level level);

/*
 * Logs one line. fields is a NULL-terminated list of key, value pairs (may be NULL)
 * printed after the message: text as key=value (quoted when needed), json as members.
 */
void log_kv(enum log_level level, const char *const *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(...) log_kv(LOG_ERROR, NULL, __VA_ARGS__)
#define log_warn(...) log_kv(LOG_WARN, NULL, __VA_ARGS__)
#define log_info(...) log_kv(LOG_INFO, NULL, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_kv(LOG_DEBUG, NULL, __VA_ARGS__);                                                  \
    } while (0)

#endif
