/* Progress bar (terminal) or progress lines (logs, pipes). */
#include "mfres/progress.h"

#include <string.h>

#include "mfres/core.h"

void mfres_progress_start(mfres_progress *p, FILE *out, bool tty, const char *label, long total) {
    memset(p, 0, sizeof *p);
    p->out = out;
    p->tty = tty;
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total > 0 ? total : 1;
    p->t_start = mfres_now();
    p->last_decile = 0;
}

static void format_eta(char *buf, size_t n, double seconds) {
    int s = (int)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, n, "%dh%02dm", s / 3600, s / 60 % 60);
    else snprintf(buf, n, "%dm%02ds", s / 60, s % 60);
}

void mfres_progress_update(mfres_progress *p, long done, const char *stats) {
    double now = mfres_now(), elapsed = now - p->t_start;
    double frac = (double)done / (double)p->total;
    char eta[32];
    format_eta(eta, sizeof eta, done > 0 ? elapsed * (1 - frac) / frac : 0);
    if (p->tty) {
        if (now - p->t_last_line < 0.1 && done < p->total) return;
        p->t_last_line = now;
        enum { WIDTH = 24 };
        char bar[WIDTH + 1];
        int filled = (int)(frac * WIDTH);
        for (int i = 0; i < WIDTH; i++) bar[i] = i < filled ? '#' : '-';
        bar[WIDTH] = '\0';
        fprintf(p->out, "\r%s [%s] %3d%% %ld/%ld %s eta %s\033[K", p->label, bar, (int)(frac * 100), done, p->total,
                stats ? stats : "", eta);
        fflush(p->out);
        return;
    }
    int decile = (int)(frac * 10);
    if (decile > p->last_decile && done < p->total) {
        p->last_decile = decile;
        fprintf(p->out, "%s %3d%% %ld/%ld %s eta %s\n", p->label, decile * 10, done, p->total, stats ? stats : "", eta);
        fflush(p->out);
    }
}

void mfres_progress_finish(mfres_progress *p, const char *stats) {
    double elapsed = mfres_now() - p->t_start;
    if (p->tty) fprintf(p->out, "\r\033[K");
    fprintf(p->out, "%s done in %.1fs %s\n", p->label, elapsed, stats ? stats : "");
    fflush(p->out);
}
