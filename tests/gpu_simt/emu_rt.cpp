#include "emu_core.h"
#include <ucontext.h>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <memory>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;
void *emu_dyn_shared_ptr;
uint64_t emu_shfl_buf[32][32];
static cudaError_t last_err = cudaSuccess;

enum { RUN, BAR_BLOCK, BAR_WARP, DONE };
struct Fiber { ucontext_t ctx; char *stack; int state; dim3 tid; int lin; };
static std::vector<Fiber> fibers;
static ucontext_t sched_ctx;
static int cur = -1;
static bool fiber_mode = false;
static std::function<void()> *cur_body;
static int cur_lin;
int emu_linear_tid() { return cur_lin; }

static void fiber_main() {
    (*cur_body)();
    fibers[cur].state = DONE;
    swapcontext(&fibers[cur].ctx, &sched_ctx);
}
void __syncthreads() {
    if (!fiber_mode) { fprintf(stderr, "EMU: __syncthreads in direct mode\n"); abort(); }
    fibers[cur].state = BAR_BLOCK;
    swapcontext(&fibers[cur].ctx, &sched_ctx);
}
void emu_warp_barrier() {
    if (!fiber_mode) { fprintf(stderr, "EMU: shuffle in direct mode\n"); abort(); }
    fibers[cur].state = BAR_WARP;
    swapcontext(&fibers[cur].ctx, &sched_ctx);
}

static const size_t STACK = 256 * 1024;
static void run_block_fibers(std::function<void()> &body, int nthreads) {
    if ((int)fibers.size() < nthreads) {
        size_t old = fibers.size();
        fibers.resize(nthreads);
        for (size_t i = old; i < fibers.size(); i++) fibers[i].stack = (char *)malloc(STACK);
    }
    cur_body = &body;
    for (int i = 0; i < nthreads; i++) {
        Fiber &f = fibers[i];
        f.lin = i;
        f.tid = dim3(i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y));
        f.state = RUN;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        bool ran = false;
        for (int i = 0; i < nthreads; i++) {
            if (fibers[i].state != RUN) continue;
            cur = i, cur_lin = i, threadIdx = fibers[i].tid;
            swapcontext(&sched_ctx, &fibers[i].ctx);
            ran = true;
        }
        int live = 0, at_block = 0;
        for (int i = 0; i < nthreads; i++) live += fibers[i].state != DONE, at_block += fibers[i].state == BAR_BLOCK;
        if (!live) break;
        bool released = false;
        if (at_block == live) {
            for (int i = 0; i < nthreads; i++) if (fibers[i].state == BAR_BLOCK) fibers[i].state = RUN;
            released = true;
        } else {
            for (int w = 0; w * 32 < nthreads; w++) {
                int l = 0, at = 0;
                for (int i = w * 32; i < nthreads && i < w * 32 + 32; i++) l += fibers[i].state != DONE, at += fibers[i].state == BAR_WARP;
                if (l && at == l) {
                    for (int i = w * 32; i < nthreads && i < w * 32 + 32; i++) if (fibers[i].state == BAR_WARP) fibers[i].state = RUN;
                    released = true;
                }
            }
        }
        if (!ran && !released) { fprintf(stderr, "EMU: deadlock\n"); abort(); }
    }
}

static bool capturing = false;
static cudaStream_t capture_stream;
struct Graph { std::vector<std::function<void()>> ops; };
static Graph *capture_graph;

static void launch_now(emu_cfg_t cfg, bool fibered, std::function<void()> body) {
    gridDim = cfg.g, blockDim = cfg.b;
    void *sh = cfg.sh ? malloc(cfg.sh) : nullptr;
    emu_dyn_shared_ptr = sh;
    int nthreads = (int)(cfg.b.x * cfg.b.y * cfg.b.z);
    fiber_mode = fibered;
    for (unsigned z = 0; z < cfg.g.z; z++)
        for (unsigned y = 0; y < cfg.g.y; y++)
            for (unsigned x = 0; x < cfg.g.x; x++) {
                blockIdx = dim3(x, y, z);
                if (fibered) {
                    run_block_fibers(body, nthreads);
                } else {
                    for (int i = 0; i < nthreads; i++) {
                        cur_lin = i;
                        threadIdx = dim3(i % cfg.b.x, (i / cfg.b.x) % cfg.b.y, i / (cfg.b.x * cfg.b.y));
                        body();
                    }
                }
            }
    fiber_mode = false;
    free(sh);
}

static const char *fibered_kernels[] = {"k_bn_stats_partial", "k_bn_backward_partial", "k_dot_partial",
                                        "k_softmax_xent_forward", "k_meanfield_update"};
void emu_launch(emu_cfg_t cfg, const char *name, std::function<void()> body) {
    long threads = (long)cfg.b.x * cfg.b.y * cfg.b.z;
    if (cfg.g.x == 0 || cfg.g.y == 0 || cfg.g.z == 0 || threads == 0 || threads > 1024 || cfg.g.y > 65535 ||
        cfg.g.z > 65535 || cfg.sh > 48 * 1024) {
        fprintf(stderr, "EMU: bad launch configuration for %s: grid %u %u %u block %u %u %u shared %zu\n", name,
                cfg.g.x, cfg.g.y, cfg.g.z, cfg.b.x, cfg.b.y, cfg.b.z, cfg.sh);
        last_err = cudaErrorInvalidConfiguration;
        return;
    }
    bool fibered = false;
    for (const char *k : fibered_kernels) if (!strncmp(name, k, strlen(k))) fibered = true;
    if (capturing) {
        if (cfg.s != capture_stream) { fprintf(stderr, "EMU: launch on another stream during capture\n"); abort(); }
        capture_graph->ops.push_back([=]() { launch_now(cfg, fibered, body); });
        return;
    }
    launch_now(cfg, fibered, body);
}

extern "C" {
/* For the CUDA libraries' stand-ins (libs_emu.c): fn(arg) as a one-thread
 * launch on stream s, so that it is recorded during a capture and replayed by
 * the graph, as a cuDNN or cuBLAS call is. arg is copied. */
void emu_launch_c(cudaStream_t s, const char *name, void (*fn)(void *), const void *arg, size_t bytes) {
    auto buf = std::make_shared<std::vector<char>>((const char *)arg, (const char *)arg + bytes);
    emu_launch(emu_cfg(dim3(1), dim3(1), 0, s), name, [fn, buf]() { fn(buf->data()); });
}

struct emu_copy { void *dst; const void *src; size_t n; int value; };
static void emu_do_copy(void *a) { emu_copy *c = (emu_copy *)a; memmove(c->dst, c->src, c->n); }
static void emu_do_set(void *a) { emu_copy *c = (emu_copy *)a; memset(c->dst, c->value, c->n); }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind, cudaStream_t st) {
    emu_copy c = {d, s, n, 0};
    emu_launch_c(st, "cudaMemcpyAsync", emu_do_copy, &c, sizeof c);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st) {
    emu_copy c = {d, nullptr, n, v};
    emu_launch_c(st, "cudaMemsetAsync", emu_do_set, &c, sizeof c);
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = (cudaStream_t)malloc(1); return cudaSuccess; }
cudaError_t cudaMallocHost(void **p, size_t n) { *p = malloc(n ? n : 1); return *p ? cudaSuccess : cudaErrorMemoryAllocation; }
cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }

cudaError_t cudaGetLastError(void) { cudaError_t e = last_err; last_err = cudaSuccess; return e; }
/* Filled with a NaN pattern, as a GPU's memory is not zeroed: reading what was never written shows. */
cudaError_t cudaMalloc(void **p, size_t n) {
    *p = malloc(n ? n : 1);
    if (*p) memset(*p, 0xff, n);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, enum cudaMemcpyKind) { memcpy(d, s, n); return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int *c) { *c = getenv("EMU_NO_GPU") ? 0 : 1; return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t e) { static char b[64]; snprintf(b, sizeof b, "emulated error %d", (int)e); return b; }
cudaError_t cudaStreamCreate(cudaStream_t *s) { *s = (cudaStream_t)malloc(1); return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { free((void *)s); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode) {
    capturing = true, capture_stream = s, capture_graph = new Graph;
    return cudaSuccess;
}
/* EMU_GRAPH_SIZES=1 prints how many operations (kernel launches and library
 * calls) each captured graph holds: the launches a step saves. */
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g) {
    capturing = false;
    *g = (cudaGraph_t)capture_graph;
    if (getenv("EMU_GRAPH_SIZES")) printf("emulated CUDA graph captured: %zu operations\n", capture_graph->ops.size());
    return cudaSuccess;
}
/* An executable graph is a copy, as CUDA's is: the graph may be destroyed after. */
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long) {
    *e = (cudaGraphExec_t) new Graph(*(Graph *)g);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) { for (auto &op : ((Graph *)e)->ops) op(); return cudaSuccess; }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { delete (Graph *)e; return cudaSuccess; }
cudaError_t cudaGraphDestroy(cudaGraph_t g) { delete (Graph *)g; return cudaSuccess; }
}
