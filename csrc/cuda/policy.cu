// CUDA kernels of hardmix::policy_update / policy_draw. No torch headers.
//
// The policy is csrc/kernels/policy.h, the very code the CPU ops run (and
// that the tests compare with the Python reference bit for bit): a step is
// sequential by nature (each entry's admission depends on the previous
// ones), so one device thread runs it, on the caller's stream, and the host
// never waits.
//
// Input values the op layer cannot check without a device sync (index and
// class ranges, negative or non-finite values under nonfinite='raise') are
// checked here, before any write: a bad step runs as an update with no
// examples and leaves an error in counters[kErrorCode, kErrorAt,
// kErrorValue], which hardmix.Engine raises at its next synchronising call.

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "../kernels/policy.h"
#include "launch.h"

namespace hardmix {
namespace cuda {
namespace {

namespace pk = policy;

__device__ void fail(int64_t* counters, int64_t code, int64_t at, int64_t value) {
  if (counters[pk::kErrorCode] != 0) return;  // keep the first error
  counters[pk::kErrorCode] = code;
  counters[pk::kErrorAt] = at;
  counters[pk::kErrorValue] = value;
}

__device__ int64_t bits_of(double x) {
  int64_t b;
  memcpy(&b, &x, sizeof b);
  return b;
}

// The op layer's value checks (csrc/ops/policy.cpp: checked_batch), on the device.
__device__ bool batch_ok(const pk::PolicyView& v, const pk::Batch& in) {
  for (int64_t b = 0; b < in.B; ++b) {
    if (in.indices[b] < 0 || in.indices[b] >= v.N) {
      fail(v.counters, pk::kErrIndex, b, in.indices[b]);
      return false;
    }
    if (in.classes && v.cfg.num_classes > 0 && (in.classes[b] < 0 || in.classes[b] >= v.cfg.num_classes)) {
      fail(v.counters, pk::kErrClass, b, in.classes[b]);
      return false;
    }
    if (in.priorities && in.priorities[b] < 0) {
      fail(v.counters, pk::kErrNegative, b, bits_of(in.priorities[b]));
      return false;
    }
    if (v.cfg.raise_nonfinite && !pk::PolicyView::valid_input(in, b)) {
      fail(v.counters, pk::kErrNonfinite, b, bits_of(in.losses[b]));
      return false;
    }
  }
  return true;
}

// A bad step still counts as a step, as an update with no examples would, so
// the step numbers (and every later draw) stay those of the host's sequence.
__global__ void update_kernel(pk::PolicyView v, pk::Batch in) {
  if (batch_ok(v, in)) {
    v.update(in);
  } else {
    v.update(pk::Batch{0, in.indices, in.losses, nullptr, nullptr, nullptr, nullptr});
  }
}

__global__ void draw_kernel(pk::PolicyView v, int64_t m, const int64_t* exclude, int64_t E, int64_t* out,
                            double* facts) {
  for (int64_t k = 0; k < E; ++k) {
    if (exclude[k] < 0 || exclude[k] >= v.N) {
      fail(v.counters, pk::kErrExclude, k, exclude[k]);
      for (int64_t r = 0; r < m; ++r) out[r] = -1;
      out[m] = 0;
      if (facts != nullptr) {
        for (int64_t k2 = 0; k2 <= E + m; ++k2) facts[k2] = 0.0;
      }
      return;
    }
  }
  const int64_t n = v.draw(m, exclude, E, out, facts);
  for (int64_t r = n; r < m; ++r) out[r] = -1;
  out[m] = n;
}

int status() { return static_cast<int>(cudaGetLastError()); }

// Clears an error left by earlier, unrelated work, so that status() after a
// launch reports this launch (a launch that fails raises in the op layer,
// and the host's step count must not have moved).
void clear_stale_error() { (void)cudaGetLastError(); }

}  // namespace

int launch_policy_update(const policy::PolicyView& v, const policy::Batch& in, void* stream) {
  clear_stale_error();
  update_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(v, in);
  return status();
}

int launch_policy_draw(const policy::PolicyView& v, int64_t m, const int64_t* exclude, int64_t E,
                       int64_t* out, double* facts, void* stream) {
  clear_stale_error();
  draw_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(v, m, exclude, E, out, facts);
  return status();
}

}  // namespace cuda
}  // namespace hardmix
