// CUDA kernels of hardmix::uniform_fill / gumbel_fill. No torch headers.
// The draw itself is csrc/kernels/rng.h, shared with the CPU and mirrored in
// Python; this file only maps one thread to one element.

#include <cuda_runtime.h>

#include <cstdint>

#include "../kernels/rng.h"
#include "launch.h"

namespace hardmix {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void fill_kernel(double* out, int64_t n, uint64_t key,
                            uint64_t offset, bool gumbel) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    const double u =
        rng::to_uniform(rng::draw_bits(key, offset + static_cast<uint64_t>(i)));
    out[i] = gumbel ? rng::to_gumbel(u) : u;
  }
}

}  // namespace

const char* error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int launch_fill(double* out, int64_t n, uint64_t key, uint64_t offset,
                bool gumbel, void* stream) {
  if (n == 0) return 0;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < 65535 ? want : 65535);
  fill_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      out, n, key, offset, gumbel);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace hardmix
