/* A progress line on a terminal. */
#include "progress.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

#define BAR_WIDTH 30

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void progress_init(struct progress *p, FILE *out)
{
    memset(p, 0, sizeof(*p));
    p->out = out;
    p->tty = isatty(fileno(out)) == 1;
}

const char *progress_bytes(uint64_t n, char *buf)
{
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1000 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1000;
        u++;
    }
    snprintf(buf, 16, u ? "%.1f%s" : "%.0f%s", v, units[u]);
    return buf;
}

void progress_draw(struct progress *p, const char *label, size_t done, size_t total,
                   const char *unit, uint64_t bytes, const char *note, bool force)
{
    if (!p->tty)
        return;
    int64_t t = now_us();
    if (!force && t - p->drawn_us < 100000)
        return;
    p->drawn_us = t;
    char bar[BAR_WIDTH + 1], b[16];
    struct buf line = BUF_INIT(512);
    size_t fill = total ? (done >= total ? BAR_WIDTH : done * BAR_WIDTH / total) : 0;
    memset(bar, '#', fill);
    memset(bar + fill, '.', BAR_WIDTH - fill);
    bar[BAR_WIDTH] = '\0';
    if (total)
        buf_printf(&line, "%s [%s] %zu/%zu %s", label, bar, done, total, unit);
    else
        buf_printf(&line, "%s %zu %s", label, done, unit);
    if (bytes)
        buf_printf(&line, "  %s", progress_bytes(bytes, b));
    if (note && *note)
        buf_printf(&line, "  %s", note);
    size_t len = line.len;
    fprintf(p->out, "\r%s%*s", buf_cstr(&line), p->width > len ? (int)(p->width - len) : 0, "");
    p->width = len;
    buf_free(&line);
    fflush(p->out);
}

void progress_end(struct progress *p)
{
    if (p->tty && p->width) {
        fputc('\n', p->out);
        fflush(p->out);
    }
    p->width = 0;
}
