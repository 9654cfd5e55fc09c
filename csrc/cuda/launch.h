// Host-side entry points of the CUDA kernels (csrc/cuda/*.cu).
//
// This header is the whole interface between the torch-facing op layer
// (csrc/ops/cuda_ops.cpp, compiled by the host compiler with the stable ABI)
// and the kernels (compiled by nvcc with no torch header, which keeps the .cu
// files quick to compile). It uses no CUDA types
// either: streams travel as void* and errors as the integer value of
// cudaError_t (0 = success; error_string() names it).
//
// Every launcher only enqueues work on `stream` and returns: none waits for
// the device. Validation of user input happens in the op layer, before launch,
// except what would need the device's values: the policy kernels check those
// themselves (csrc/cuda/policy.cu).
#pragma once

#include <cstdint>

#include "../kernels/policy.h"

namespace hardmix {
namespace cuda {

// cudaGetErrorString for a code returned below.
const char* error_string(int code);

// out[i] = uniform or Gumbel draw for index offset + i under `key`
// (rng::stream_key), i in [0, n). One thread per element.
int launch_fill(double* out, int64_t n, uint64_t key, uint64_t offset,
                bool gumbel, void* stream);

// Element types of the logits for launch_margin.
enum LogitsType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// out[b] = margin of row b (csrc/kernels/margin.h), or NaN where targets[b]
// is outside [0, C). Rows start row_stride elements apart, columns are
// contiguous. One warp per row. B may be 0.
int launch_margin(const void* logits, int logits_type, int64_t B, int64_t C,
                  int64_t row_stride, const void* targets, bool targets_int64,
                  float* out, void* stream);

// The policy on the device (csrc/cuda/policy.cu): the arrays of `v` and `in`
// (and v.scratch: update_scratch_bytes(B, v.quota_classes()) / draw_scratch_bytes(E, m) bytes)
// are device memory; v and in are copied into the launch. One thread runs a
// step or a draw; value errors are left in v.counters (see policy.cu).
int launch_policy_update(const policy::PolicyView& v, const policy::Batch& in, void* stream);
// out[0, m) = the drawn indices (-1 padded), out[m] = how many; facts
// (device memory [E + m + 1], or null) as PolicyView::draw writes them.
int launch_policy_draw(const policy::PolicyView& v, int64_t m, const int64_t* exclude, int64_t E,
                       int64_t* out, double* facts, void* stream);

}  // namespace cuda
}  // namespace hardmix
