// CPU emulation of the CUDA execution model, for checking kernels.cu without a GPU
// (tests/test_gpu_kernels_emulated; written alongside the kernels, session of 2026-12-01).
// transform.py rewrites each `kernel<<<grid, block, shared, stream>>>(args)` into
// EMU_LAUNCH; emu_rt.cpp runs a launch block by block. Kernels with barriers or
// warp shuffles run each thread as a fiber (ucontext) switched at __syncthreads
// and at each shuffle; the rest run thread after thread. Launch limits (1024
// threads, grid y/z 65535, 48 KiB shared) are checked as a GPU would. What it
// cannot show: races between blocks (blocks run one after another), fused
// arithmetic, the device's expf/logf rounding.
//
// bfloat16: the real <cuda_bf16.h>, included here before __device__ and the
// rest are redefined below (its own definitions need CUDA's), so that
// kernels.cu's later #include of it is a no-op. On the host its conversions
// are plain C++: __float2bfloat16_rn rounds to nearest, ties to even, as the
// device's cvt.rn.bf16.f32 does; a NaN stays a NaN (0x7fff here).
#pragma once
#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <functional>
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

extern dim3 threadIdx, blockIdx, blockDim, gridDim;
extern void *emu_dyn_shared_ptr;
void __syncthreads();
void emu_warp_barrier();
extern uint64_t emu_shfl_buf[32][32];
int emu_linear_tid();

template <class T> T __shfl_xor_sync(unsigned, T v, int off) {
    int t = emu_linear_tid(), lane = t % 32, warp = t / 32;
    uint64_t raw = 0;
    memcpy(&raw, &v, sizeof v);
    emu_shfl_buf[warp][lane] = raw;
    emu_warp_barrier();
    T r;
    uint64_t o = emu_shfl_buf[warp][lane ^ off];
    memcpy(&r, &o, sizeof r);
    emu_warp_barrier();
    return r;
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }

struct emu_cfg_t { dim3 g, b; size_t sh; cudaStream_t s; };
inline emu_cfg_t emu_cfg(dim3 g, dim3 b, size_t sh = 0, cudaStream_t s = 0) { return {g, b, sh, s}; }
void emu_launch(emu_cfg_t cfg, const char *name, std::function<void()> body);
// The call may hold commas outside parentheses (k<uint32_t, T>(...)): variadic.
#define EMU_LAUNCH(cfg, ...) emu_launch(emu_cfg cfg, #__VA_ARGS__, [=]() { __VA_ARGS__; })
