#ifndef REGMIRROR_PROGRESS_H
#define REGMIRROR_PROGRESS_H
/*
 * progress: the progress of a long command (garbage-collect, `regmirror cache verify|warm`)
 * on a terminal: one line redrawn in place, "label [#####.....] done/total unit  bytes  note".
 * Off a terminal nothing is drawn (the commands print their own plain lines), so scripts and
 * logs read the same as before.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct progress {
    FILE *out;
    bool tty;         /* out is a terminal: draw; else every call is a no-op */
    int64_t drawn_us; /* last draw, to redraw at most ten times a second */
    size_t width;     /* of the last line, to blank what a shorter one leaves */
};

/* Draws on out when it is a terminal. */
void progress_init(struct progress *p, FILE *out);
/* Redraws the line (at most every 100 ms unless force). total 0: no bar, only the count;
 * bytes 0 and note NULL are left out. */
void progress_draw(struct progress *p, const char *label, size_t done, size_t total,
                   const char *unit, uint64_t bytes, const char *note, bool force);
/* Ends the line (the last drawing stays on screen). */
void progress_end(struct progress *p);
/* "1.5MB": n bytes for people, into buf (16 bytes). */
const char *progress_bytes(uint64_t n, char *buf);

#endif
