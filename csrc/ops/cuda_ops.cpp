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
#include "policy_view.h"

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

// ---- the policy on the device ---------------------------------------------
// The engine's state tensors live on one CUDA device (config, read on the
// host, stays a CPU tensor). Shapes, dtypes and devices are checked here;
// values (index and class ranges, signs, non-finite values under 'raise')
// on the device before any write, see csrc/cuda/policy.cu. Inputs must be
// on the state's device with the engine's dtypes (hardmix.Engine converts).

namespace pk = policy;

// A state tensor on the CUDA device of `table`.
struct OnDevice {
  int32_t index;
  void operator()(const char* op, const char* name, const Tensor& t) const {
    HM_CHECK(t.is_cuda() && t.get_device_index() == index, op, ": ", name,
             " must be on the state's device cuda:", index, ", got ", detail::device_str(t));
  }
};

void device_input(const char* op, const OnDevice& dev, const char* name, const Tensor& t,
                  ScalarType dtype, int64_t B) {
  dev(op, name, t);
  checks::dtype(op, name, t, dtype);
  checks::contiguous(op, name, t);
  HM_CHECK(t.dim() == 1 && (B < 0 || t.size(0) == B), op, ": ", name, " must be a 1-D tensor [",
           B, "], got shape ", detail::shape_str(t));
}

Tensor device_scratch(int64_t bytes, const Tensor& like) {
  return torch::stable::empty({bytes / 8 + 1}, ScalarType::Long, std::nullopt, like.device());
}

void policy_update_cuda(Tensor table, Tensor pos, Tensor slots, Tensor links, Tensor heap, Tensor free,
                        Tensor classes_state, Tensor tree, Tensor window, Tensor counters, Tensor balance,
                        Tensor config, int64_t seed, Tensor indices, Tensor losses,
                        std::optional<Tensor> margins, std::optional<Tensor> classes,
                        std::optional<Tensor> priorities, std::optional<Tensor> replayed,
                        std::optional<Tensor> rows,
                        std::optional<Tensor> slot_class) {
  const char* op = "hardmix::policy_update";
  on_cuda(op, "table", table);
  const OnDevice dev{table.get_device_index()};
  const torch::stable::accelerator::DeviceGuard guard(dev.index);
  pk::PolicyView v = policy_ops::view(op, dev, table, pos, slots, links, heap, free, classes_state, tree,
                                      window, counters, balance, config, seed);
  HM_CHECK(!rows.has_value() && !v.sharded(), op, ": a sharded table is not supported on CUDA");
  device_input(op, dev, "indices", indices, ScalarType::Long, -1);
  const int64_t B = indices.size(0);
  device_input(op, dev, "losses", losses, ScalarType::Double, B);
  if (margins) device_input(op, dev, "margins", *margins, ScalarType::Double, B);
  if (classes) device_input(op, dev, "classes", *classes, ScalarType::Long, B);
  if (priorities) device_input(op, dev, "priorities", *priorities, ScalarType::Double, B);
  if (replayed) device_input(op, dev, "replayed", *replayed, ScalarType::Bool, B);
  policy_ops::check_batch_kinds(op, v.cfg, margins.has_value(), classes.has_value(), priorities.has_value());
  v.slot_class = policy_ops::slot_class_of(op, dev, slot_class, v.R);
  Tensor scratch = device_scratch(pk::update_scratch_bytes(B, v.quota_classes()), table);
  v.scratch = scratch.mutable_data_ptr();
  const pk::Batch in{B, indices.const_data_ptr<int64_t>(), losses.const_data_ptr<double>(),
                     margins ? margins->const_data_ptr<double>() : nullptr,
                     classes ? classes->const_data_ptr<int64_t>() : nullptr,
                     priorities ? priorities->const_data_ptr<double>() : nullptr,
                     replayed ? reinterpret_cast<const uint8_t*>(replayed->const_data_ptr()) : nullptr};
  check_launch(op, cuda::launch_policy_update(v, in, current_stream(table)));
}

void policy_draw_cuda(Tensor tree, Tensor slots, Tensor pos, Tensor counters, Tensor config,
                      int64_t seed, Tensor exclude, Tensor out, std::optional<Tensor> facts) {
  const char* op = "hardmix::policy_draw";
  on_cuda(op, "tree", tree);
  const OnDevice dev{tree.get_device_index()};
  const torch::stable::accelerator::DeviceGuard guard(dev.index);
  pk::PolicyView v = policy_ops::draw_view(op, dev, tree, slots, pos, counters, config, seed);
  device_input(op, dev, "exclude", exclude, ScalarType::Long, -1);
  device_input(op, dev, "out", out, ScalarType::Long, -1);
  HM_CHECK(out.numel() >= 1, op, ": out must have m + 1 >= 1 entries, got ", out.numel());
  const int64_t m = out.numel() - 1, E = exclude.numel();
  double* f = nullptr;
  if (facts) {
    device_input(op, dev, "facts", *facts, ScalarType::Double, E + m + 1);
    f = facts->mutable_data_ptr<double>();
  }
  Tensor scratch = device_scratch(pk::draw_scratch_bytes(E, m), tree);
  v.scratch = scratch.mutable_data_ptr();
  check_launch(op, cuda::launch_policy_draw(v, m, exclude.const_data_ptr<int64_t>(), E,
                                            out.mutable_data_ptr<int64_t>(), f, current_stream(tree)));
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CUDA, m) {
  m.impl("uniform_fill", TORCH_BOX(&hardmix::uniform_fill_cuda));
  m.impl("gumbel_fill", TORCH_BOX(&hardmix::gumbel_fill_cuda));
  m.impl("margin", TORCH_BOX(&hardmix::margin_cuda));
  m.impl("policy_update", TORCH_BOX(&hardmix::policy_update_cuda));
  m.impl("policy_draw", TORCH_BOX(&hardmix::policy_draw_cuda));
}
