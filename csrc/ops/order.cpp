// CPU implementation of hardmix::stable_order. Contract: csrc/ops/library.cpp.
// Kernel: csrc/kernels/order.h.

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../kernels/order.h"
#include "checks.h"

namespace hardmix {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr const char* kOp = "hardmix::stable_order";

// v in the fewest of 15 or 17 significant digits that read back as v (a key
// just above 1 must not print as 1).
std::string exact(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  if (std::strtod(buf, nullptr) != v) std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void stable_order(Tensor keys, Tensor out) {
  checks::host_vector(kOp, "keys", "keys [n]", keys, ScalarType::Double);
  const int64_t n = keys.size(0);
  checks::host_out(kOp, "out", out, ScalarType::Long, n);
  const Tensor k = torch::stable::contiguous(keys);
  const double* key = k.const_data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    HM_CHECK(key[i] >= 0.0 && key[i] < 1.0, kOp, ": keys[", i, "] = ", exact(key[i]), " is outside [0, 1)");
  }
  order::stable_order(key, n, out.mutable_data_ptr<int64_t>());
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CPU, m) {
  m.impl("stable_order", TORCH_BOX(&hardmix::stable_order));
}
