// CPU implementation of hardmix::margin. Contract: csrc/ops/library.cpp.
// Kernel: csrc/kernels/margin.h.

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <vector>

#include "../kernels/margin.h"
#include "checks.h"

namespace hardmix {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Elements (rows * C) per parallel chunk. Below this, waking another thread
// can take longer than the work itself, most of all on a loaded machine with
// few cores.
constexpr int64_t kGrainElements = 1 << 18;

// Every target must lie in [0, C): checked before anything is written.
template <typename Target>
void check_targets(const Target* t, int64_t B, int64_t C) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t v = static_cast<int64_t>(t[b]);
    HM_CHECK(v >= 0 && v < C, "hardmix::margin: targets[", b, "] = ", v,
             " is out of range for C = ", C, " classes (want 0 <= t < ", C,
             ")");
  }
}

Tensor margin_cpu(const Tensor& logits_in, const Tensor& targets_in) {
  checks::margin_args(logits_in, targets_in);
  checks::on_cpu("hardmix::margin", "logits", logits_in);
  const int64_t B = logits_in.size(0);
  const int64_t C = logits_in.size(1);
  const checks::MarginInputs in = checks::margin_inputs(logits_in, targets_in);
  const Tensor& targets = in.targets;
  const int64_t row_stride = in.row_stride;

  // int32 targets are widened once (B elements); the kernels read int64.
  std::vector<int64_t> widened;
  const int64_t* t = nullptr;
  if (targets.scalar_type() == ScalarType::Long) {
    t = static_cast<const int64_t*>(targets.const_data_ptr());
    check_targets(t, B, C);
  } else {
    const auto* t32 = static_cast<const int32_t*>(targets.const_data_ptr());
    check_targets(t32, B, C);
    widened.assign(t32, t32 + B);
    t = widened.data();
  }

  Tensor out = torch::stable::empty({B}, ScalarType::Float, std::nullopt,
                                    logits_in.device());
  if (B == 0) return out;
  float* o = out.mutable_data_ptr<float>();
  const void* x = in.logits.const_data_ptr();
  const ScalarType dtype = in.logits.scalar_type();
  const int64_t grain_rows = C >= kGrainElements ? 1 : kGrainElements / C;
  torch::stable::parallel_for(0, B, grain_rows, [&](int64_t lo, int64_t hi) {
    if (dtype == ScalarType::Float) {
      margin::rows_margin_f32(static_cast<const float*>(x), row_stride, C, t,
                              o, lo, hi);
    } else if (dtype == ScalarType::Half) {
      margin::rows_margin_f16(static_cast<const uint16_t*>(x), row_stride, C,
                              t, o, lo, hi);
    } else {
      margin::rows_margin_bf16(static_cast<const uint16_t*>(x), row_stride, C,
                               t, o, lo, hi);
    }
  });
  return out;
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CPU, m) {
  m.impl("margin", TORCH_BOX(&hardmix::margin_cpu));
}
