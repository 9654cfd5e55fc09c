// CPU implementation of hardmix::replay_weights. Contract: csrc/ops/library.cpp.
// Kernel: csrc/kernels/weights.h.

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "../kernels/weights.h"
#include "checks.h"

namespace hardmix {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr const char* kOp = "hardmix::replay_weights";

void vector_arg(const char* name, const Tensor& t, ScalarType dtype, int64_t n) {
  checks::on_cpu(kOp, name, t);
  checks::dtype(kOp, name, t, dtype);
  checks::contiguous(kOp, name, t);
  HM_CHECK(t.dim() == 1 && (n < 0 || t.size(0) == n), kOp, ": ", name, " must be a 1-D tensor [", n,
           "], got shape ", detail::shape_str(t));
}

void replay_weights(Tensor w, Tensor drawn_w, std::optional<Tensor> in_fresh, double eligible, int64_t m_all,
                    int64_t keep, double n, double f_all, double scale, Tensor out) {
  vector_arg("w", w, ScalarType::Double, -1);
  const int64_t B = w.size(0);
  vector_arg("drawn_w", drawn_w, ScalarType::Double, -1);
  if (in_fresh) vector_arg("in_fresh", *in_fresh, ScalarType::Bool, B);
  vector_arg("out", out, ScalarType::Float, B);
  HM_CHECK(m_all >= 0, kOp, ": m_all must be >= 0, got ", m_all);
  HM_CHECK(keep >= 0 && keep <= B, kOp, ": keep must be in [0, ", B, "], got ", keep);
  const double t = weights::tau(drawn_w.const_data_ptr<double>(), drawn_w.size(0), m_all, eligible);
  const uint8_t* fresh = in_fresh ? reinterpret_cast<const uint8_t*>(in_fresh->const_data_ptr()) : nullptr;
  weights::batch(w.const_data_ptr<double>(), B, t, fresh, n, f_all, scale, keep, out.mutable_data_ptr<float>());
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CPU, m) {
  m.impl("replay_weights", TORCH_BOX(&hardmix::replay_weights));
}
