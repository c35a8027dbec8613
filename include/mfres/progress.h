/* Progress for long work: a redrawn bar on a terminal, plain lines otherwise. */
#ifndef MFRES_PROGRESS_H
#define MFRES_PROGRESS_H

#include <stdbool.h>
#include <stdio.h>

typedef struct mfres_progress {
    FILE *out;
    bool tty;
    char label[64];
    long total;
    double t_start, t_last_line;
    int last_decile;
} mfres_progress;

void mfres_progress_start(mfres_progress *p, FILE *out, bool tty, const char *label, long total);
/* done of total finished; stats is a short free-form text ("loss 0.41 acc 85.2%"). On a
 * terminal the bar is redrawn (at most ~10 times a second); otherwise a plain line
 * is printed at every tenth of the work. */
void mfres_progress_update(mfres_progress *p, long done, const char *stats);
void mfres_progress_finish(mfres_progress *p, const char *stats);

#endif
