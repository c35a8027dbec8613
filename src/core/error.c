/* Per-thread error messages and leveled logging. */
#include "mfres/core.h"

#include <stdarg.h>
#include <string.h>

static _Thread_local char error_message[2048];
static int log_level = MFRES_LOG_INFO;

int mfres_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return code;
}

int mfres_fail_context(int code, const char *fmt, ...) {
    char context[1024];
    char previous[sizeof error_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
    memcpy(previous, error_message, sizeof previous);
    /* Truncation is acceptable here: a long message keeps its beginning. */
    size_t len = strlen(context);
    if (len > sizeof error_message - 3) len = sizeof error_message - 3;
    memcpy(error_message, context, len);
    memcpy(error_message + len, ": ", 2);
    size_t rest = sizeof error_message - len - 3;
    strncpy(error_message + len + 2, previous, rest);
    error_message[sizeof error_message - 1] = '\0';
    return code;
}

const char *mfres_last_error(void) { return error_message; }
void mfres_clear_error(void) { error_message[0] = '\0'; }

void mfres_set_log_level(int level) { log_level = level; }
int mfres_log_level(void) { return log_level; }

void mfres_log(const char *fmt, ...) {
    if (log_level < MFRES_LOG_INFO) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void mfres_log_debug(const char *fmt, ...) {
    if (log_level < MFRES_LOG_DEBUG) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
