/* The CPU check at startup. The default build uses -march=native, so a binary
 * built on an AVX-512 machine and copied to an AVX2 one would die of SIGILL at
 * some arbitrary instruction. Before main runs, this compares the instruction
 * sets the compiler was allowed to use with what this CPU has, and names what
 * is missing and how to build for it.
 *
 * The check is compiled for plain x86-64 (target attribute), so it cannot
 * itself trip over the instructions it looks for. The testing aid
 * MFRES_PRETEND_CPU_LACKS=FEATURE[,FEATURE...] (or "all") makes it act as if
 * this CPU lacked those features. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)

typedef struct cpu_feature {
    const char *name; /* as __builtin_cpu_supports spells it */
    int supported;
} cpu_feature;

#define FEATURE(name) {name, -1}
static cpu_feature built_for[] = {
#ifdef __AVX512F__
    FEATURE("avx512f"),
#endif
#ifdef __AVX512BW__
    FEATURE("avx512bw"),
#endif
#ifdef __AVX512VL__
    FEATURE("avx512vl"),
#endif
#ifdef __AVX512DQ__
    FEATURE("avx512dq"),
#endif
#ifdef __AVX2__
    FEATURE("avx2"),
#endif
#ifdef __FMA__
    FEATURE("fma"),
#endif
#ifdef __AVX__
    FEATURE("avx"),
#endif
#ifdef __BMI2__
    FEATURE("bmi2"),
#endif
#ifdef __SSE4_2__
    FEATURE("sse4.2"),
#endif
    {NULL, 0},
};

__attribute__((target("arch=x86-64"))) static int pretend_lacks(const char *name) {
    const char *list = getenv("MFRES_PRETEND_CPU_LACKS");
    if (!list) return 0;
    if (!strcmp(list, "all")) return 1;
    size_t len = strlen(name);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if (n == len && !strncmp(p, name, len)) return 1;
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

/* __builtin_cpu_supports needs a literal argument: one case per name. */
__attribute__((target("arch=x86-64"))) static int cpu_has(const char *name) {
    __builtin_cpu_init();
    if (pretend_lacks(name)) return 0;
    if (!strcmp(name, "avx512f")) return __builtin_cpu_supports("avx512f");
    if (!strcmp(name, "avx512bw")) return __builtin_cpu_supports("avx512bw");
    if (!strcmp(name, "avx512vl")) return __builtin_cpu_supports("avx512vl");
    if (!strcmp(name, "avx512dq")) return __builtin_cpu_supports("avx512dq");
    if (!strcmp(name, "avx2")) return __builtin_cpu_supports("avx2");
    if (!strcmp(name, "fma")) return __builtin_cpu_supports("fma");
    if (!strcmp(name, "avx")) return __builtin_cpu_supports("avx");
    if (!strcmp(name, "bmi2")) return __builtin_cpu_supports("bmi2");
    if (!strcmp(name, "sse4.2")) return __builtin_cpu_supports("sse4.2");
    return 1;
}

__attribute__((constructor, target("arch=x86-64"))) static void mfres_cpu_check(void) {
    char missing[256] = "";
    size_t at = 0;
    for (cpu_feature *f = built_for; f->name; f++)
        if (!cpu_has(f->name) && at < sizeof missing)
            at += (size_t)snprintf(missing + at, sizeof missing - at, "%s%s", at ? ", " : "", f->name);
    if (!at) return;
    fprintf(stderr,
            "mfres: error: this binary was built (-march=native on the build machine) for instructions this CPU "
            "lacks: %s; it would crash on an illegal instruction.\n"
            "HINT: rebuild on this machine (make clean && make), or build a portable binary with "
            "`make OPT=-O2` (or OPT='-O3 -march=x86-64-v3' for any AVX2 machine).\n",
            missing);
    _exit(1);
}

#endif
