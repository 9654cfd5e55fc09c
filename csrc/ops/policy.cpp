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
#include "policy_view.h"

namespace hardmix {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace pk = policy;

constexpr const char* kUpdate = "hardmix::policy_update";
constexpr const char* kDraw = "hardmix::policy_draw";
constexpr const char* kDynamics = "hardmix::policy_dynamics";
constexpr const char* kFind = "hardmix::policy_find";

// This thread's scratch buffer of at least `bytes` bytes (8-byte aligned),
// kept between calls.
void* host_scratch(int64_t bytes) {
  thread_local std::vector<int64_t> buf;
  const size_t words = static_cast<size_t>(bytes / 8 + 1);
  if (buf.size() < words) buf.resize(words);
  return buf.data();
}

// (the state on the CPU: `place` = checks::on_cpu in policy_ops' checks)

// A 1-D input of B entries on the CPU.
void batch_input(const char* op, const char* name, const Tensor& t, int64_t B) {
  checks::on_cpu(op, name, t);
  HM_CHECK(t.dim() == 1, op, ": ", name, " must be a 1-D tensor [B], got a ", t.dim(),
           "-D tensor of shape ", detail::shape_str(t));
  HM_CHECK(t.size(0) == B, op, ": ", name, " has ", t.size(0),
           " entries but indices has ", B);
}

// Widens a float32/float64 [B] tensor to doubles (exact).
void widen(const char* op, const char* name, const Tensor& t, std::vector<double>& out) {
  const Tensor c = torch::stable::contiguous(t);
  const int64_t n = c.numel();
  if (c.scalar_type() == ScalarType::Double) {
    const double* p = c.const_data_ptr<double>();
    out.assign(p, p + n);
  } else {
    HM_CHECK(c.scalar_type() == ScalarType::Float, op, ": ", name,
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

void check_finite(const char* op, const char* name, const std::vector<double>& v) {
  for (size_t k = 0; k < v.size(); ++k) {
    HM_CHECK(std::isfinite(v[k]), op, ": ", name, "[", k, "] = ", v[k],
             " is not finite (nonfinite='raise')");
  }
}

// A step's batch, checked and widened to doubles (held in thread_local
// buffers until the next call on this thread).
struct CheckedBatch {
  Tensor idx_c, cls_c, rep_c;
  pk::Batch batch;
};

CheckedBatch checked_batch(const char* op, const pk::Config& cfg, int64_t N, const Tensor& indices,
                           const Tensor& losses, const std::optional<Tensor>& margins,
                           const std::optional<Tensor>& classes,
                           const std::optional<Tensor>& priorities,
                           const std::optional<Tensor>& replayed = std::nullopt) {
  checks::host_vector(op, "indices", "indices [B]", indices, ScalarType::Long);
  const int64_t B = indices.size(0);
  batch_input(op, "losses", losses, B);
  if (margins) batch_input(op, "margins", *margins, B);
  if (classes) {
    batch_input(op, "classes", *classes, B);
    checks::dtype(op, "classes", *classes, ScalarType::Long);
  }
  if (priorities) batch_input(op, "priorities", *priorities, B);
  if (replayed) {
    batch_input(op, "replayed", *replayed, B);
    checks::dtype(op, "replayed", *replayed, ScalarType::Bool);
  }

  CheckedBatch out;
  out.idx_c = torch::stable::contiguous(indices);
  const int64_t* idx = out.idx_c.const_data_ptr<int64_t>();
  check_indices(op, "indices", idx, B, N);
  policy_ops::check_batch_kinds(op, cfg, margins.has_value(), classes.has_value(), priorities.has_value());

  thread_local std::vector<double> loss_v, margin_v, prio_v;
  widen(op, "losses", losses, loss_v);
  if (margins) widen(op, "margins", *margins, margin_v);
  if (priorities) widen(op, "priorities", *priorities, prio_v);
  const int64_t* cls = nullptr;
  if (classes) {
    out.cls_c = torch::stable::contiguous(*classes);
    cls = out.cls_c.const_data_ptr<int64_t>();
    if (cfg.num_classes > 0) {
      for (int64_t b = 0; b < B; ++b) {
        HM_CHECK(cls[b] >= 0 && cls[b] < cfg.num_classes, op, ": classes[", b, "] = ", cls[b],
                 " is out of range [0, ", cfg.num_classes, ")");
      }
    }
  }
  if (priorities) {
    for (int64_t b = 0; b < B; ++b) {
      HM_CHECK(!(prio_v[b] < 0), op, ": priorities[", b, "] = ", prio_v[b], " is negative");
    }
  }
  if (cfg.raise_nonfinite) {
    check_finite(op, "losses", loss_v);
    if (margins) check_finite(op, "margins", margin_v);
    if (priorities) check_finite(op, "priorities", prio_v);
  }
  const uint8_t* rep = nullptr;
  if (replayed) {
    out.rep_c = torch::stable::contiguous(*replayed);
    rep = reinterpret_cast<const uint8_t*>(out.rep_c.const_data_ptr());
  }
  out.batch = pk::Batch{B, idx, loss_v.data(), margins ? margin_v.data() : nullptr, cls,
                        priorities ? prio_v.data() : nullptr, rep};
  return out;
}

// rows: f64 [B, 8], CPU, contiguous.
double* rows_arg(const char* op, const Tensor& rows, int64_t B) {
  policy_ops::state_tensor(op, checks::on_cpu, "rows", rows, ScalarType::Double);
  HM_CHECK(rows.dim() == 2 && rows.size(0) == B && rows.size(1) == pk::kTableCols, op,
           ": rows must have shape [", B, ", ", pk::kTableCols, "], got ", detail::shape_str(rows));
  return rows.mutable_data_ptr<double>();
}

void policy_update(Tensor table, Tensor pos, Tensor slots, Tensor links, Tensor heap, Tensor free,
                   Tensor classes_state, Tensor tree, Tensor window, Tensor counters, Tensor balance,
                   Tensor config, int64_t seed, Tensor indices, Tensor losses,
                   std::optional<Tensor> margins, std::optional<Tensor> classes,
                   std::optional<Tensor> priorities, std::optional<Tensor> replayed,
                   std::optional<Tensor> rows,
                   std::optional<Tensor> slot_class) {
  pk::PolicyView v = policy_ops::view(kUpdate, checks::on_cpu, table, pos, slots, links, heap, free,
                                      classes_state, tree, window, counters, balance, config, seed);
  const CheckedBatch in =
      checked_batch(kUpdate, v.cfg, v.N, indices, losses, margins, classes, priorities, replayed);
  HM_CHECK(v.sharded() == rows.has_value(), kUpdate,
           ": rows must be given exactly when the table is sharded (world ", v.cfg.world, ")");
  if (rows) v.xrows = rows_arg(kUpdate, *rows, in.batch.B);
  v.slot_class = policy_ops::slot_class_of(kUpdate, checks::on_cpu, slot_class, v.R);
  v.scratch = host_scratch(pk::update_scratch_bytes(in.batch.B, v.quota_classes()));
  // All checks passed: from here on, state changes.
  v.update(in.batch);
}

void policy_dynamics(Tensor table, Tensor config, int64_t t, Tensor indices, Tensor losses,
                     std::optional<Tensor> margins, std::optional<Tensor> classes,
                     std::optional<Tensor> priorities, Tensor rows) {
  pk::PolicyView v{};
  v.cfg = policy_ops::config_of(kDynamics, checks::on_cpu, table, config, 0);
  HM_CHECK(v.sharded(), kDynamics, ": the table is not sharded (world 0 in config)");
  HM_CHECK(t >= 0, kDynamics, ": t must be >= 0, got ", t);
  v.table = table.mutable_data_ptr<double>();
  const CheckedBatch in = checked_batch(kDynamics, v.cfg, v.cfg.num_examples, indices, losses, margins,
                                        classes, priorities);
  double* out = rows_arg(kDynamics, rows, in.batch.B);
  v.scratch = host_scratch(pk::update_scratch_bytes(in.batch.B, 0));  // (owned_dynamics: the tally alone)
  v.owned_dynamics(in.batch, t, out);
}

void policy_find(Tensor pos, Tensor slots, Tensor config, Tensor indices, Tensor out) {
  pk::PolicyView v = policy_ops::find_view(kFind, checks::on_cpu, pos, slots, config);
  checks::host_vector(kFind, "indices", "indices [B]", indices, ScalarType::Long);
  checks::host_out(kFind, "out", out, ScalarType::Long, indices.size(0));
  const Tensor ic = torch::stable::contiguous(indices);
  const int64_t* idx = ic.const_data_ptr<int64_t>();
  check_indices(kFind, "indices", idx, ic.numel(), v.N);
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < ic.numel(); ++b) o[b] = v.pos_get(idx[b]);
}

void policy_draw(Tensor tree, Tensor slots, Tensor pos, Tensor counters, Tensor config,
                 int64_t seed, Tensor exclude, Tensor out, std::optional<Tensor> facts) {
  pk::PolicyView v = policy_ops::draw_view(kDraw, checks::on_cpu, tree, slots, pos, counters, config, seed);
  checks::host_vector(kDraw, "exclude", "exclude [E]", exclude, ScalarType::Long);
  checks::host_vector(kDraw, "out", "out [m]", out, ScalarType::Long);
  checks::contiguous(kDraw, "out", out);
  const Tensor ex = torch::stable::contiguous(exclude);
  const int64_t E = ex.numel();
  const int64_t* e = ex.const_data_ptr<int64_t>();
  check_indices(kDraw, "exclude", e, E, v.N);
  HM_CHECK(out.numel() >= 1, kDraw, ": out must have m + 1 >= 1 entries, got ", out.numel());
  const int64_t m = out.numel() - 1;
  int64_t* o = out.mutable_data_ptr<int64_t>();
  double* f = nullptr;
  if (facts) {
    checks::host_out(kDraw, "facts", *facts, ScalarType::Double, E + m + 1, "E + m + 1");
    f = facts->mutable_data_ptr<double>();
  }
  v.scratch = host_scratch(pk::draw_scratch_bytes(E, m));
  const int64_t n = v.draw(m, e, E, o, f);
  for (int64_t k = n; k < m; ++k) o[k] = -1;
  o[m] = n;
}

}  // namespace
}  // namespace hardmix

STABLE_TORCH_LIBRARY_IMPL(hardmix, CPU, m) {
  m.impl("policy_update", TORCH_BOX(&hardmix::policy_update));
  m.impl("policy_draw", TORCH_BOX(&hardmix::policy_draw));
  m.impl("policy_dynamics", TORCH_BOX(&hardmix::policy_dynamics));
  m.impl("policy_find", TORCH_BOX(&hardmix::policy_find));
}
