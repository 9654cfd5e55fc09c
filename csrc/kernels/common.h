// Shared by every torch-free kernel header: the host/device qualifier.
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
