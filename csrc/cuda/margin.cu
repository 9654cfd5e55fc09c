// CUDA kernel of hardmix::margin: one warp per row. No torch headers.
// Definition and edge cases: csrc/kernels/margin.h (the CPU kernel); here an
// out-of-range target gives NaN instead of an error, since reporting it would
// need a host sync.

#include <cuda_runtime.h>

#include <cstdint>

#include "../kernels/floats.h"
#include "launch.h"

namespace hardmix {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <class L, typename Target>
__global__ void margin_kernel(const typename L::storage* __restrict__ x,
                              int64_t B, int64_t C, int64_t row_stride,
                              const Target* __restrict__ targets,
                              float* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                      threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= B) return;  // whole warp leaves together
  const int64_t t = static_cast<int64_t>(targets[row]);
  const bool valid = t >= 0 && t < C;
  const typename L::storage* r = x + row * row_stride;
  float mx = -__int_as_float(0x7f800000);  // -inf
  bool bad = false;
  for (int64_t j = lane; j < C; j += 32) {
    if (j == t) continue;
    const float v = L::load(r[j]);
    mx = v > mx ? v : mx;
    bad = bad || (v != v);
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, mx, off);
    mx = o > mx ? o : mx;
  }
  bad = __any_sync(0xffffffffu, bad);
  if (lane == 0) {
    out[row] = (!valid || bad) ? __int_as_float(0x7fc00000)
                               : L::load(r[t]) - mx;
  }
}

template <class L, typename Target>
int launch(const void* x, int64_t B, int64_t C, int64_t row_stride,
           const void* targets, float* out, cudaStream_t stream) {
  const int64_t blocks = (B + kWarpsPerBlock - 1) / kWarpsPerBlock;
  margin_kernel<L, Target><<<static_cast<unsigned>(blocks),
                             32 * kWarpsPerBlock, 0, stream>>>(
      static_cast<const typename L::storage*>(x), B, C, row_stride,
      static_cast<const Target*>(targets), out);
  return static_cast<int>(cudaGetLastError());
}

template <typename Target>
int launch_typed(const void* x, int logits_type, int64_t B, int64_t C,
                 int64_t row_stride, const void* targets, float* out,
                 cudaStream_t stream) {
  switch (logits_type) {
    case kFloat32:
      return launch<LoadF32, Target>(x, B, C, row_stride, targets, out, stream);
    case kFloat16:
      return launch<LoadF16, Target>(x, B, C, row_stride, targets, out, stream);
    case kBFloat16:
      return launch<LoadBF16, Target>(x, B, C, row_stride, targets, out, stream);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace

int launch_margin(const void* logits, int logits_type, int64_t B, int64_t C,
                  int64_t row_stride, const void* targets, bool targets_int64,
                  float* out, void* stream) {
  if (B == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  return targets_int64
             ? launch_typed<int64_t>(logits, logits_type, B, C, row_stride,
                                     targets, out, s)
             : launch_typed<int32_t>(logits, logits_type, B, C, row_stride,
                                     targets, out, s);
}

}  // namespace cuda
}  // namespace hardmix
