/* Memory laid out in two passes, as the plans own theirs (one allocation per
 * run, no scattered mallocs): a counting pass over a zero arena adds up what
 * every buffer takes, then a carving pass over one allocation of that size
 * hands out the same offsets in the same order. Used by the CPU training plan
 * (src/models/cpu_train.c) and the GPU plan (src/gpu/cuda_plan.c). */
#ifndef MFRES_ARENA_H
#define MFRES_ARENA_H

#include <stddef.h>

typedef struct mem_arena {
    char *base; /* NULL in the counting pass */
    size_t used;
} mem_arena;

/* The next `bytes`, rounded up to `align` (a power of two); NULL while counting. */
static inline void *arena_take(mem_arena *a, size_t bytes, size_t align) {
    void *p = a->base ? a->base + a->used : NULL;
    a->used += (bytes + align - 1) & ~(align - 1);
    return p;
}

#endif
