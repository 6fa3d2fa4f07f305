#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define LOG_MAX_FIELDS 32

static enum log_level cur_level = LOG_INFO;
static enum log_format cur_format = LOG_FORMAT_TEXT;
static char *fixed_keys[LOG_MAX_FIELDS];
static char *fixed_vals[LOG_MAX_FIELDS];
static int nfixed;

static const char *level_names[] = {"error", "warning", "info", "debug"};

int log_level_parse(const char *s, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } map[] = {{"error", LOG_ERROR},
               {"warn", LOG_WARN},
               {"warning", LOG_WARN},
               {"info", LOG_INFO},
               {"debug", LOG_DEBUG}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcmp(s, map[i].name) == 0) {
            *out = map[i].level;
            return 0;
        }
    }
    return -1;
}

void log_setup(enum log_level level, enum log_format format)
{
    cur_level = level;
    cur_format = format;
}

void log_add_field(const char *key, const char *value)
{
    if (nfixed >= LOG_MAX_FIELDS)
        return;
    fixed_keys[nfixed] = strdup(key);
    fixed_vals[nfixed] = strdup(value);
    nfixed++;
}

void log_reset(void)
{
    for (int i = 0; i < nfixed; i++) {
        free(fixed_keys[i]);
        free(fixed_vals[i]);
        fixed_keys[i] = fixed_vals[i] = NULL;
    }
    nfixed = 0;
}

bool log_enabled(enum log_level level)
{
    return level <= cur_level;
}

/* Writes s as a JSON string body (without quotes). */
static void put_json(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

static void put_text_value(FILE *f, const char *s)
{
    if (*s && strpbrk(s, " \"=\t\n") == NULL) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    put_json(f, s);
    fputc('"', f);
}

static void put_field(FILE *f, const char *k, const char *v)
{
    if (cur_format == LOG_FORMAT_JSON) {
        fputs(",\"", f);
        put_json(f, k);
        fputs("\":\"", f);
        put_json(f, v);
        fputc('"', f);
    } else {
        fprintf(f, " %s=", k);
        put_text_value(f, v);
    }
}

void log_kv(enum log_level level, const char *const *fields, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", (long)(tv.tv_usec / 1000));

    char line[8192];
    FILE *f = fmemopen(line, sizeof(line), "w");
    if (!f)
        return;
    if (cur_format == LOG_FORMAT_JSON) {
        fprintf(f, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, level_names[level]);
        put_json(f, msg);
        fputc('"', f);
    } else {
        fprintf(f, "time=\"%s\" level=%s msg=", ts, level_names[level]);
        put_text_value(f, msg);
    }
    for (int i = 0; i < nfixed; i++)
        put_field(f, fixed_keys[i], fixed_vals[i]);
    for (int i = 0; fields && fields[i] && fields[i + 1]; i += 2)
        put_field(f, fields[i], fields[i + 1]);
    if (cur_format == LOG_FORMAT_JSON)
        fputc('}', f);
    fputc('\n', f);
    long len = ftell(f);
    fclose(f);
    if (len > 0 && (size_t)len < sizeof(line))
        fwrite(line, 1, (size_t)len, stderr);
    else
        fprintf(stderr, "%s\n", msg);
}
