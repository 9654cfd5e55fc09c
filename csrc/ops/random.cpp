// CPU implementation of hardmix::uniform_fill and hardmix::gumbel_fill.
// Contract: csrc/ops/library.cpp. Kernel: csrc/kernels/rng.h.

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>

#include "../kernels/rng.h"
#include "checks.h"

namespace hardmix {
namespace {

using torch::stable::Tensor;

// Elements per parallel chunk: below this the thread pool costs more than it
// saves.
constexpr int64_t kGrain = 1 << 15;

template <bool kGumbel>
void fill_cpu(const char* op, Tensor& out, int64_t seed, int64_t step,
              int64_t stream, int64_t offset) {
  checks::fill_args(op, out);
  checks::on_cpu(op, "out", out);
  const int64_t n = out.numel();
  if (n == 0) return;
  double* data = out.mutable_data_ptr<double>();
  const uint64_t key = rng::stream_key(static_cast<uint64_t>(seed),
                                       static_cast<uint64_t>(step),
                                       static_cast<uint64_t>(stream));
  const uint64_t base = static_cast<uint64_t>(offset);
  torch::stable::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double u = rng::to_uniform(
          rng::draw_bits(key, base + static_cast<uint64_t>(i)));
      data[i] = kGumbel ? rng::to_gumbel(u) : u;
    }
  });
}

void uniform_fill_cpu(Tensor out, int64_t seed, int64_t step, int64_t stream,
                      int64_t offset) {
  fill_cpu<false>("hardmix::uniform_fill", out, seed, step, stream, offset);
}

void gumbel_fill_cpu(Tensor out, int64_t seed, int64_t step, int64_t stream,
                     int64_t offset) {
  fill_cpu<true>("hardmix::gumbel_fill", out, seed, step, stream, offset);
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CPU, m) {
  m.impl("uniform_fill", TORCH_BOX(&hardmix::uniform_fill_cpu));
  m.impl("gumbel_fill", TORCH_BOX(&hardmix::gumbel_fill_cpu));
}
