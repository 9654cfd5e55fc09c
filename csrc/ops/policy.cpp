// CPU implementation of hardmix::policy_update and hardmix::policy_draw.
// Contracts: csrc/ops/library.cpp. Kernel: csrc/kernels/policy.h.
//
// Every check on user input runs before the first write, so a call that
// raises leaves every state tensor exactly as it was.

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "../kernels/policy.h"
#include "checks.h"

namespace hardmix {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace pk = policy;

constexpr const char* kUpdate = "hardmix::policy_update";
constexpr const char* kDraw = "hardmix::policy_draw";

// A state tensor as the engine makes it: CPU, contiguous, dtype, numel.
void state_tensor(const char* op, const char* name, const Tensor& t, ScalarType dtype) {
  checks::on_cpu(op, name, t);
  checks::dtype(op, name, t, dtype);
  checks::contiguous(op, name, t);
}

int64_t rows_of(const char* op, const char* name, const Tensor& t, int64_t cols) {
  HM_CHECK(t.dim() == 2 && t.size(1) == cols, op, ": state ", name, " must have shape [n, ", cols,
           "], got ", detail::shape_str(t));
  return t.size(0);
}

// Views the state tensors; checks that they are mutually consistent.
pk::PolicyView view(const char* op, const Tensor& table, const Tensor& pos, const Tensor& slots,
                    const Tensor& links, const Tensor& heap, const Tensor& free, const Tensor& classes,
                    const Tensor& tree, const Tensor& window, const Tensor& counters,
                    const Tensor& config, int64_t seed) {
  state_tensor(op, "table", table, ScalarType::Double);
  state_tensor(op, "pos", pos, ScalarType::Int);
  state_tensor(op, "slots", slots, ScalarType::Double);
  state_tensor(op, "links", links, ScalarType::Int);
  state_tensor(op, "heap", heap, ScalarType::Double);
  state_tensor(op, "free", free, ScalarType::Int);
  state_tensor(op, "classes", classes, ScalarType::Long);
  state_tensor(op, "tree", tree, ScalarType::Double);
  state_tensor(op, "window", window, ScalarType::Double);
  state_tensor(op, "counters", counters, ScalarType::Long);
  state_tensor(op, "config", config, ScalarType::Double);
  pk::PolicyView v{};
  v.N = rows_of(op, "table", table, pk::kTableCols);
  v.R = rows_of(op, "slots", slots, pk::kSlotFields);
  v.K = rows_of(op, "classes", classes, 2);
  HM_CHECK(pos.dim() == 1 && pos.size(0) == v.N, op, ": state pos must have shape [", v.N,
           "], got ", detail::shape_str(pos));
  HM_CHECK(rows_of(op, "links", links, pk::kLinkFields) == v.R && free.numel() == v.R &&
               rows_of(op, "heap", heap, 2) == v.R && v.R >= 1,
           op, ": state links/heap/free do not match R = ", v.R);
  v.P = tree.numel() / 2;
  HM_CHECK(tree.numel() % 2 == 0 && v.P >= v.R && v.P < 2 * v.R + 1 && (v.P & (v.P - 1)) == 0, op,
           ": state tree must have 2P entries, P the power of two >= R = ", v.R, ", got ",
           tree.numel());
  v.W = window.numel();
  HM_CHECK(v.W >= 1, op, ": state window must not be empty");
  HM_CHECK(counters.numel() == pk::kCounters && config.numel() == pk::kConfigFields, op,
           ": state counters/config have the wrong size");
  v.table = table.mutable_data_ptr<double>();
  v.pos = pos.mutable_data_ptr<int32_t>();
  v.slots = slots.mutable_data_ptr<double>();
  v.links = links.mutable_data_ptr<int32_t>();
  v.heap = heap.mutable_data_ptr<double>();
  v.free = free.mutable_data_ptr<int32_t>();
  v.classes = classes.mutable_data_ptr<int64_t>();
  v.tree = tree.mutable_data_ptr<double>();
  v.window = window.mutable_data_ptr<double>();
  v.counters = counters.mutable_data_ptr<int64_t>();
  v.cfg = pk::Config::from(config.const_data_ptr<double>(), static_cast<uint64_t>(seed));
  HM_CHECK(v.K == (v.cfg.quotas ? v.cfg.num_classes : 1), op,
           ": state classes must have one row per heap class");
  return v;
}

// A 1-D input of B entries on the CPU.
void batch_input(const char* name, const Tensor& t, int64_t B) {
  checks::on_cpu(kUpdate, name, t);
  HM_CHECK(t.dim() == 1, kUpdate, ": ", name, " must be a 1-D tensor [B], got a ", t.dim(),
           "-D tensor of shape ", detail::shape_str(t));
  HM_CHECK(t.size(0) == B, kUpdate, ": ", name, " has ", t.size(0),
           " entries but indices has ", B);
}

// Widens a float32/float64 [B] tensor to doubles (exact).
void widen(const char* name, const Tensor& t, std::vector<double>& out) {
  const Tensor c = torch::stable::contiguous(t);
  const int64_t n = c.numel();
  if (c.scalar_type() == ScalarType::Double) {
    const double* p = c.const_data_ptr<double>();
    out.assign(p, p + n);
  } else {
    HM_CHECK(c.scalar_type() == ScalarType::Float, kUpdate, ": ", name,
             " must have dtype Float or Double, got ", c.scalar_type());
    const float* p = c.const_data_ptr<float>();
    out.assign(p, p + n);  // float -> double: exact
  }
}

void check_indices(const char* op, const char* name, const int64_t* idx, int64_t n, int64_t N) {
  for (int64_t k = 0; k < n; ++k) {
    HM_CHECK(idx[k] >= 0 && idx[k] < N, op, ": ", name, "[", k, "] = ", idx[k],
             " is out of range [0, ", N, ")");
  }
}

void check_finite(const char* name, const std::vector<double>& v) {
  for (size_t k = 0; k < v.size(); ++k) {
    HM_CHECK(std::isfinite(v[k]), kUpdate, ": ", name, "[", k, "] = ", v[k],
             " is not finite (nonfinite='raise')");
  }
}

void policy_update(Tensor table, Tensor pos, Tensor slots, Tensor links, Tensor heap, Tensor free,
                   Tensor classes_state, Tensor tree, Tensor window, Tensor counters,
                   Tensor config, int64_t seed, Tensor indices, Tensor losses,
                   std::optional<Tensor> margins, std::optional<Tensor> classes,
                   std::optional<Tensor> priorities) {
  pk::PolicyView v = view(kUpdate, table, pos, slots, links, heap, free, classes_state, tree, window,
                          counters, config, seed);
  checks::on_cpu(kUpdate, "indices", indices);
  checks::dim(kUpdate, "indices [B]", indices, 1);
  checks::dtype(kUpdate, "indices", indices, ScalarType::Long);
  const int64_t B = indices.size(0);
  batch_input("losses", losses, B);
  if (margins) batch_input("margins", *margins, B);
  if (classes) {
    batch_input("classes", *classes, B);
    checks::dtype(kUpdate, "classes", *classes, ScalarType::Long);
  }
  if (priorities) batch_input("priorities", *priorities, B);

  const Tensor idx_c = torch::stable::contiguous(indices);
  const int64_t* idx = idx_c.const_data_ptr<int64_t>();
  check_indices(kUpdate, "indices", idx, B, v.N);
  HM_CHECK(v.cfg.score != pk::kScoreMargin || margins.has_value(), kUpdate,
           ": score 'margin' needs margins (pass logits and targets)");
  HM_CHECK((v.cfg.score == pk::kScoreGiven) == priorities.has_value(), kUpdate,
           ": priorities must be given exactly when score is 'given'");
  HM_CHECK(!v.cfg.quotas || classes.has_value(), kUpdate,
           ": class_quotas needs classes (pass targets)");

  thread_local std::vector<double> loss_v, margin_v, prio_v;
  widen("losses", losses, loss_v);
  if (margins) widen("margins", *margins, margin_v);
  if (priorities) widen("priorities", *priorities, prio_v);
  Tensor cls_c;
  const int64_t* cls = nullptr;
  if (classes) {
    cls_c = torch::stable::contiguous(*classes);
    cls = cls_c.const_data_ptr<int64_t>();
    if (v.cfg.num_classes > 0) {
      for (int64_t b = 0; b < B; ++b) {
        HM_CHECK(cls[b] >= 0 && cls[b] < v.cfg.num_classes, kUpdate, ": classes[", b, "] = ",
                 cls[b], " is out of range [0, ", v.cfg.num_classes, ")");
      }
    }
  }
  if (priorities) {
    for (int64_t b = 0; b < B; ++b) {
      HM_CHECK(!(prio_v[b] < 0), kUpdate, ": priorities[", b, "] = ", prio_v[b],
               " is negative");
    }
  }
  if (v.cfg.raise_nonfinite) {
    check_finite("losses", loss_v);
    if (margins) check_finite("margins", margin_v);
    if (priorities) check_finite("priorities", prio_v);
  }

  // All checks passed: from here on, state changes.
  pk::Batch batch{B, idx, loss_v.data(), margins ? margin_v.data() : nullptr, cls,
                  priorities ? prio_v.data() : nullptr};
  v.update(batch);
}

void policy_draw(Tensor tree, Tensor slots, Tensor pos, Tensor counters, Tensor config,
                 int64_t seed, Tensor exclude, Tensor out) {
  state_tensor(kDraw, "tree", tree, ScalarType::Double);
  state_tensor(kDraw, "slots", slots, ScalarType::Double);
  state_tensor(kDraw, "pos", pos, ScalarType::Int);
  state_tensor(kDraw, "counters", counters, ScalarType::Long);
  state_tensor(kDraw, "config", config, ScalarType::Double);
  checks::on_cpu(kDraw, "exclude", exclude);
  checks::dim(kDraw, "exclude [E]", exclude, 1);
  checks::dtype(kDraw, "exclude", exclude, ScalarType::Long);
  checks::on_cpu(kDraw, "out", out);
  checks::dim(kDraw, "out [m]", out, 1);
  checks::dtype(kDraw, "out", out, ScalarType::Long);
  checks::contiguous(kDraw, "out", out);
  pk::PolicyView v{};
  v.N = pos.numel();
  v.R = rows_of(kDraw, "slots", slots, pk::kSlotFields);
  v.P = tree.numel() / 2;
  HM_CHECK(v.P >= v.R && (v.P & (v.P - 1)) == 0, kDraw, ": state tree does not match R = ", v.R);
  HM_CHECK(counters.numel() == pk::kCounters && config.numel() == pk::kConfigFields, kDraw,
           ": state counters/config have the wrong size");
  const Tensor ex = torch::stable::contiguous(exclude);
  const int64_t E = ex.numel();
  const int64_t* e = ex.const_data_ptr<int64_t>();
  check_indices(kDraw, "exclude", e, E, v.N);

  v.tree = tree.mutable_data_ptr<double>();
  v.slots = slots.mutable_data_ptr<double>();
  v.pos = pos.mutable_data_ptr<int32_t>();
  v.counters = counters.mutable_data_ptr<int64_t>();
  v.cfg = pk::Config::from(config.const_data_ptr<double>(), static_cast<uint64_t>(seed));
  HM_CHECK(out.numel() >= 1, kDraw, ": out must have m + 1 >= 1 entries, got ", out.numel());
  const int64_t m = out.numel() - 1;
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const int64_t n = v.draw(m, e, E, o);
  for (int64_t k = n; k < m; ++k) o[k] = -1;
  o[m] = n;
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CPU, m) {
  m.impl("policy_update", TORCH_BOX(&hardmix::policy_update));
  m.impl("policy_draw", TORCH_BOX(&hardmix::policy_draw));
}
