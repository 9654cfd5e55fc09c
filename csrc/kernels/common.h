// Shared by every torch-free kernel header: the host/device qualifiers.
//
// Headers in csrc/kernels/ know nothing of torch. They are included by the
// CPU ops (g++) and by the CUDA kernels (nvcc, which sees no torch header), so
// anything that both sides use is marked HM_HD.
#pragma once

#if defined(__CUDACC__)
#define HM_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Force-inlined on the host too, so per-ISA clones (margin.cpp) compile these
// helpers for their own instruction set.
#define HM_HD inline __attribute__((always_inline))
#else
#define HM_HD inline
#endif

// HM_FN: the same without forced inlining, for the policy's larger functions.
// Every function of the policy's headers runs on the host (the CPU ops) and,
// compiled by nvcc, on the device (one thread runs a step: the policy is
// sequential by nature; csrc/cuda/policy.cu). So that code uses no std::
// algorithm, container or math function: sorting and selection are util.h's
// heap sort, scratch memory comes from the caller, and logarithms and
// exponentials are rng.h's own (+ - * / only), which is what makes CPU, CUDA
// and the Python reference agree to the bit.
// HM_PREFETCH: a cache hint on the host, nothing on the device.
#if defined(__CUDACC__)
#define HM_FN __host__ __device__
#else
#define HM_FN
#endif
#if defined(__CUDA_ARCH__)
#define HM_PREFETCH(p, rw) ((void)0)
#else
#define HM_PREFETCH(p, rw) __builtin_prefetch((p), (rw))
#endif
