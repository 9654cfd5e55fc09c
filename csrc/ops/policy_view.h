// The policy ops' view of the engine's state tensors, shared by the CPU ops
// (policy.cpp) and the CUDA ops (cuda_ops.cpp): shape, dtype and consistency
// checks of the state, and the PolicyView over it. `place` checks a state
// tensor's device (CPU, or the engine's CUDA device).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <optional>

#include "../kernels/policy.h"
#include "checks.h"

namespace hardmix {
namespace policy_ops {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace pk = policy;

// A state tensor as the engine makes it: on the engine's device (`place`
// checks it), contiguous, of its dtype.
template <class Place>
void state_tensor(const char* op, Place place, const char* name, const Tensor& t, ScalarType dtype) {
  place(op, name, t);
  checks::dtype(op, name, t, dtype);
  checks::contiguous(op, name, t);
}

inline int64_t rows_of(const char* op, const char* name, const Tensor& t, int64_t cols) {
  HM_CHECK(t.dim() == 2 && t.size(1) == cols, op, ": state ", name, " must have shape [n, ", cols,
           "], got ", detail::shape_str(t));
  return t.size(0);
}

// The config vector, with the table's shape checked against its sharding:
// [N, 8] unsharded; sharded (world W, rank r) the rows i // W of the indices
// i = r (mod W) in [0, N): [(N - r + W - 1) // W, 8].
// (config is read on the host: a CPU tensor whatever the engine's device.)
template <class Place>
pk::Config config_of(const char* op, Place place, const Tensor& table, const Tensor& config, int64_t seed) {
  state_tensor(op, place, "table", table, ScalarType::Double);
  state_tensor(op, checks::on_cpu, "config", config, ScalarType::Double);
  HM_CHECK(config.numel() == pk::kConfigFields, op, ": state config has the wrong size");
  const pk::Config c = pk::Config::from(config.const_data_ptr<double>(), static_cast<uint64_t>(seed));
  const int64_t rows = rows_of(op, "table", table, pk::kTableCols);
  if (c.world != 0) {
    HM_CHECK(c.world >= 1 && c.rank >= 0 && c.rank < c.world && c.num_examples >= 1, op,
             ": state config has a bad sharding: world ", c.world, ", rank ", c.rank, ", N ",
             c.num_examples);
    const int64_t want = (c.num_examples - c.rank + c.world - 1) / c.world;
    HM_CHECK(rows == want, op, ": state table must have ", want, " rows (shard ", c.rank, " of ",
             c.world, ", N = ", c.num_examples, "), got ", rows);
  }
  return c;
}

// Views the state tensors; checks that they are mutually consistent.
template <class Place>
pk::PolicyView view(const char* op, Place place, const Tensor& table, const Tensor& pos, const Tensor& slots,
                    const Tensor& links, const Tensor& heap, const Tensor& free, const Tensor& classes,
                    const Tensor& tree, const Tensor& window, const Tensor& counters,
                    const Tensor& balance, const Tensor& config, int64_t seed) {
  state_tensor(op, place, "pos", pos, ScalarType::Int);
  state_tensor(op, place, "slots", slots, ScalarType::Double);
  state_tensor(op, place, "links", links, ScalarType::Int);
  state_tensor(op, place, "heap", heap, ScalarType::Double);
  state_tensor(op, place, "free", free, ScalarType::Int);
  state_tensor(op, place, "classes", classes, ScalarType::Long);
  state_tensor(op, place, "tree", tree, ScalarType::Double);
  state_tensor(op, place, "window", window, ScalarType::Double);
  state_tensor(op, place, "counters", counters, ScalarType::Long);
  state_tensor(op, place, "balance", balance, ScalarType::Double);
  HM_CHECK(counters.numel() == pk::kCounters && config.numel() == pk::kConfigFields, op,
           ": state counters/config have the wrong size");
  pk::PolicyView v{};
  v.cfg = config_of(op, place, table, config, seed);
  v.N = v.cfg.world ? v.cfg.num_examples : table.size(0);
  v.R = rows_of(op, "slots", slots, pk::kSlotFields);
  v.K = rows_of(op, "classes", classes, pk::kHeapClassFields);
  const int64_t pos_n = v.cfg.world ? 2 * pk::pow2_at_least(v.R) : v.N;
  HM_CHECK(pos.dim() == 1 && pos.size(0) == pos_n, op, ": state pos must have shape [", pos_n,
           "], got ", detail::shape_str(pos));
  HM_CHECK(rows_of(op, "links", links, pk::kLinkFields) == v.R && free.numel() == v.R &&
               rows_of(op, "heap", heap, 2) == v.R && v.R >= 1,
           op, ": state links/heap/free do not match R = ", v.R);
  v.P = tree.numel() / 2;
  HM_CHECK(tree.numel() % 2 == 0 && v.P == pk::pow2_at_least(v.R), op,
           ": state tree must have 2P entries, P the least power of two >= R = ", v.R, ", got ",
           tree.numel());
  v.W = window.numel();
  HM_CHECK(v.W >= 1, op, ": state window must not be empty");
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
  v.balance = balance.mutable_data_ptr<double>();
  HM_CHECK(v.K == (v.cfg.quotas ? v.cfg.num_classes : 1), op,
           ": state classes must have one row per heap class");
  HM_CHECK(rows_of(op, "balance", balance, pk::kBalanceFields) == v.K + 1, op,
           ": state balance must have one row per heap class and one more");
  HM_CHECK(v.cfg.reweight_every >= 1 && (!v.cfg.balance || v.cfg.quotas), op,
           ": state config has a bad replay balance (reweight_every ", v.cfg.reweight_every, ")");
  return v;
}

// policy_update's optional slot_class cache: i32 [R] on the state's device,
// contiguous; null when not given.
template <class Place>
int32_t* slot_class_of(const char* op, Place place, const std::optional<Tensor>& slot_class, int64_t R) {
  if (!slot_class) return nullptr;
  state_tensor(op, place, "slot_class", *slot_class, ScalarType::Int);
  HM_CHECK(slot_class->dim() == 1 && slot_class->size(0) == R, op, ": slot_class must have shape [", R,
           "], got ", detail::shape_str(*slot_class));
  return slot_class->mutable_data_ptr<int32_t>();
}

// The inputs a step needs given the policy (both op layers).
inline void check_batch_kinds(const char* op, const pk::Config& cfg, bool margins, bool classes,
                              bool priorities) {
  HM_CHECK(cfg.score != pk::kScoreMargin || margins, op,
           ": score 'margin' needs margins (pass logits and targets)");
  HM_CHECK((cfg.score == pk::kScoreGiven) == priorities, op,
           ": priorities must be given exactly when score is 'given'");
  HM_CHECK(!cfg.quotas || classes, op, ": class_quotas needs classes (pass targets)");
}

// N: the config's when sharded, else the length of pos (an array [N]).
inline int64_t examples_of(const pk::Config& cfg, const Tensor& pos) {
  return cfg.world ? cfg.num_examples : pos.numel();
}

// The view policy_draw uses (tree, slots, pos, counters), checked.
template <class Place>
pk::PolicyView draw_view(const char* op, Place place, const Tensor& tree, const Tensor& slots,
                         const Tensor& pos, const Tensor& counters, const Tensor& config, int64_t seed) {
  state_tensor(op, place, "tree", tree, ScalarType::Double);
  state_tensor(op, place, "slots", slots, ScalarType::Double);
  state_tensor(op, place, "pos", pos, ScalarType::Int);
  state_tensor(op, place, "counters", counters, ScalarType::Long);
  state_tensor(op, checks::on_cpu, "config", config, ScalarType::Double);
  HM_CHECK(counters.numel() == pk::kCounters && config.numel() == pk::kConfigFields, op,
           ": state counters/config have the wrong size");
  pk::PolicyView v{};
  v.cfg = pk::Config::from(config.const_data_ptr<double>(), static_cast<uint64_t>(seed));
  v.N = examples_of(v.cfg, pos);
  v.R = rows_of(op, "slots", slots, pk::kSlotFields);
  v.P = pk::pow2_at_least(v.R);
  HM_CHECK(tree.numel() == 2 * v.P, op, ": state tree does not match R = ", v.R);
  v.tree = tree.mutable_data_ptr<double>();
  v.slots = slots.mutable_data_ptr<double>();
  v.pos = pos.mutable_data_ptr<int32_t>();
  v.counters = counters.mutable_data_ptr<int64_t>();
  return v;
}

// The view policy_find uses (pos, slots), checked.
template <class Place>
pk::PolicyView find_view(const char* op, Place place, const Tensor& pos, const Tensor& slots,
                         const Tensor& config) {
  state_tensor(op, place, "pos", pos, ScalarType::Int);
  state_tensor(op, place, "slots", slots, ScalarType::Double);
  state_tensor(op, checks::on_cpu, "config", config, ScalarType::Double);
  HM_CHECK(config.numel() == pk::kConfigFields, op, ": state config has the wrong size");
  pk::PolicyView v{};
  v.cfg = pk::Config::from(config.const_data_ptr<double>(), 0);
  v.R = rows_of(op, "slots", slots, pk::kSlotFields);
  v.P = pk::pow2_at_least(v.R);
  v.N = examples_of(v.cfg, pos);
  HM_CHECK(pos.numel() == (v.cfg.world ? 2 * v.P : v.N), op, ": state pos does not match slots");
  v.pos = pos.mutable_data_ptr<int32_t>();
  v.slots = slots.mutable_data_ptr<double>();
  return v;
}

}  // namespace policy_ops
}  // namespace hardmix
