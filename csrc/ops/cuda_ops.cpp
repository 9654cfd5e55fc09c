// CUDA implementations of every hardmix op: validation, device guard and
// current stream here (host compiler, stable ABI), kernels in csrc/cuda/*.cu
// (nvcc, no torch headers) behind csrc/cuda/launch.h.
//
// Built into the separate library libhardmix_cuda.so, which hardmix loads only
// on a CUDA build of torch. Contracts: csrc/ops/library.cpp. Nothing here
// waits for the device.

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>

#include "../cuda/launch.h"
#include "../kernels/rng.h"
#include "checks.h"

namespace hardmix {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

void* current_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(
      aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return stream;
}

void check_launch(const char* op, int code) {
  HM_CHECK(code == 0, op, ": CUDA kernel launch failed: ",
           cuda::error_string(code));
}

void on_cuda(const char* op, const char* what, const Tensor& t) {
  HM_CHECK(t.is_cuda(), op, ": ", what, " must be a CUDA tensor here, got ",
           detail::device_str(t));
}

template <bool kGumbel>
void fill_cuda(const char* op, Tensor& out, int64_t seed, int64_t step,
               int64_t stream, int64_t offset) {
  checks::fill_args(op, out);
  on_cuda(op, "out", out);
  const torch::stable::accelerator::DeviceGuard guard(out.get_device_index());
  const uint64_t key = rng::stream_key(static_cast<uint64_t>(seed),
                                       static_cast<uint64_t>(step),
                                       static_cast<uint64_t>(stream));
  check_launch(op, cuda::launch_fill(out.mutable_data_ptr<double>(),
                                     out.numel(), key,
                                     static_cast<uint64_t>(offset), kGumbel,
                                     current_stream(out)));
}

void uniform_fill_cuda(Tensor out, int64_t seed, int64_t step, int64_t stream,
                       int64_t offset) {
  fill_cuda<false>("hardmix::uniform_fill", out, seed, step, stream, offset);
}

void gumbel_fill_cuda(Tensor out, int64_t seed, int64_t step, int64_t stream,
                      int64_t offset) {
  fill_cuda<true>("hardmix::gumbel_fill", out, seed, step, stream, offset);
}

Tensor margin_cuda(const Tensor& logits_in, const Tensor& targets_in) {
  const char* op = "hardmix::margin";
  checks::margin_args(logits_in, targets_in);
  on_cuda(op, "logits", logits_in);
  const torch::stable::accelerator::DeviceGuard guard(
      logits_in.get_device_index());
  const int64_t B = logits_in.size(0);
  const int64_t C = logits_in.size(1);
  const checks::MarginInputs in = checks::margin_inputs(logits_in, targets_in);
  Tensor out = torch::stable::empty({B}, ScalarType::Float, std::nullopt,
                                    logits_in.device());
  int type = cuda::kFloat32;
  if (in.logits.scalar_type() == ScalarType::Half) type = cuda::kFloat16;
  if (in.logits.scalar_type() == ScalarType::BFloat16) type = cuda::kBFloat16;
  check_launch(op, cuda::launch_margin(
                       in.logits.const_data_ptr(), type, B, C, in.row_stride,
                       in.targets.const_data_ptr(),
                       in.targets.scalar_type() == ScalarType::Long,
                       out.mutable_data_ptr<float>(), current_stream(out)));
  return out;
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CUDA, m) {
  m.impl("uniform_fill", TORCH_BOX(&hardmix::uniform_fill_cuda));
  m.impl("gumbel_fill", TORCH_BOX(&hardmix::gumbel_fill_cuda));
  m.impl("margin", TORCH_BOX(&hardmix::margin_cuda));
}
