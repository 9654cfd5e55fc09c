// The hardmix op library: every schema, with its contract, in one place.
//
// Schemas are the source of truth (python/hardmix/ops.py wraps each one and
// registers its fake kernel). Implementations register per backend:
// csrc/ops/<op>.cpp for CPU, csrc/ops/cuda_ops.cpp for CUDA (a separate
// shared library, loaded only on a CUDA build of torch).
//
// This file also holds the empty Python module `hardmix._C`: importing it is
// what loads this shared library and runs the registrations below. It defines
// no Python functions, so it needs only the limited API and the wheel is abi3.

#include <Python.h>

#include <torch/csrc/stable/library.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "hardmix native ops; they live in torch.ops.hardmix",
      -1,       // no per-interpreter state
      nullptr,  // no methods
      nullptr,  // no slots
      nullptr,  // traverse
      nullptr,  // clear
      nullptr,  // free
  };
  return PyModule_Create(&module_def);
}
}

STABLE_TORCH_LIBRARY(hardmix, m) {
  // uniform_fill(out, seed, step, stream, offset)
  //   out[i] = uniform(seed, step, stream, offset + i) for every element i of
  //   `out` in memory order: a double strictly inside (0, 1) (csrc/kernels/rng.h).
  //   out:     float64, contiguous, any shape (numel n, may be 0), CPU or CUDA.
  //            Mutated; nothing else is.
  //   seed, step, stream, offset: int64, read as unsigned 64-bit two's
  //            complement; index arithmetic wraps mod 2^64.
  //   Deterministic: a pure function of the arguments, bit-identical on CPU,
  //   CUDA and in hardmix.rng. O(n) work, no allocation.
  m.def(
      "uniform_fill(Tensor(a!) out, int seed, int step, int stream, "
      "int offset) -> ()");

  // gumbel_fill(out, seed, step, stream, offset)
  //   out[i] = -log(-log(u)) for the same u as uniform_fill: Gumbel(0, 1)
  //   draws, all finite (about [-3.6, 36.7]). The logarithm is hardmix's own
  //   (rng.h: log_det), so CPU, CUDA and Python agree to the bit.
  //   Same arguments, mutation, determinism and cost as uniform_fill.
  m.def(
      "gumbel_fill(Tensor(a!) out, int seed, int step, int stream, "
      "int offset) -> ()");

  // stable_order(keys, out)
  //   out[j] = the position of the j-th smallest key, equal keys in position
  //   order: torch.sort(keys, stable=True).indices (hardmix.plan's shuffle
  //   of a pass). keys: float64 [n], CPU, each in [0, 1) (else an error naming
  //   the first one outside; nothing is written). out: int64 [n], CPU,
  //   contiguous, the only write. Deterministic. Cost: expected O(n) for keys
  //   spread over [0, 1) (bucketed by value), O(n log n) at worst; O(n)
  //   scratch. CPU only (the epoch plan is made on the host).
  m.def("stable_order(Tensor keys, Tensor(a!) out) -> ()");

  // margin(logits, targets) -> margins
  //   margins[b] = logits[b, t] - max_{j != t} logits[b, j], t = targets[b]:
  //   the true-class logit minus the largest other logit; negative means
  //   misclassified. NaN in a row gives NaN; infinities follow IEEE rules.
  //   logits:  [B, C], float32 / float16 / bfloat16, C >= 2, any strides
  //            (a view whose columns are contiguous is read in place; other
  //            layouts are copied once).
  //   targets: [B], int64 or int32, same device as logits, each in [0, C).
  //            CPU: an out-of-range target is an error (nothing is written).
  //            CUDA: checking it would need a host sync, so instead the
  //            margin of that row is NaN.
  //   returns: [B] float32, new tensor on the logits' device.
  //   Mutates nothing. Deterministic (a max is order-independent; one
  //   subtraction). Not differentiable (meant for detached logits).
  //   Cost: O(B * C), one pass over each row; on CPU rows are split across
  //   threads only when B * C is large enough to pay for it.
  m.def("margin(Tensor logits, Tensor targets) -> Tensor");

  // replay_weights(w, drawn_w, in_fresh?, eligible, m_all, keep, n, f_all,
  //                scale, out)
  //   The importance weights of a batch (hardmix.ReplaySampler.weights), on
  //   the host: tau from the draw's order (the drawn members' weights
  //   drawn_w f64 [D], in draw order, starting from the eligible weight;
  //   0 if m_all = 0, inf if D < m_all), then for b < keep
  //   out[b] = scale / (q_b + (n - q_b) * rho_b) with rho_b = 1 -
  //   exp(-w[b] tau) (1 if w[b] > 0 when tau is inf) and q_b = f_all (times
  //   in_fresh[b] when given), and out[b] = 0 for b >= keep; a NaN or +inf
  //   weight becomes 0. w f64 [B], in_fresh bool [B], out f32 [B] (the only
  //   write), all CPU and contiguous; 0 <= keep <= B. Deterministic.
  //   Cost: O(B + D). CPU only (its inputs are the sampler's host records).
  m.def(
      "replay_weights(Tensor w, Tensor drawn_w, Tensor? in_fresh, float eligible, int m_all, int keep, "
      "float n, float f_all, float scale, Tensor(a!) out) -> ()");

  // policy_update(state..., config, seed, indices, losses, margins?, classes?,
  //               priorities?, replayed?, rows?)
  //   One step t of the policy (the exact rules are the docstring of
  //   python/hardmix/reference.py, which this op matches bit for bit).
  //   State (mutated; made and owned by hardmix.engine.Engine, CPU,
  //   contiguous): table f64 [N, 8], pos i32 [N], slots f64 [R, 8],
  //   links i32 [R, 4], heap f64 [R, 2], free i32 [R], classes i64 [K, 2],
  //   tree f64 [2P], window f64 [W], counters i64 [16], balance f64
  //   [K + 1, 3]. config: f64 [20], read only.
  //   Inputs: indices i64 [B] in [0, N); losses f32/f64 [B]; margins
  //   f32/f64 [B] (needed by score 'margin'); classes i64 [B] in
  //   [0, num_classes) (needed by class quotas); priorities f32/f64 [B] >= 0
  //   (exactly when score is 'given'); replayed bool [B] (the entries drawn
  //   from the reservoir; read by balance_replay; None: none). B may be 0;
  //   duplicates are handled in batch order. Every input check runs before
  //   the first write: a call that raises changes nothing.
  //   Sharded table (config world W > 0, rank r): table f64 [(N - r + W - 1)
  //   // W, 8] holds the rows of indices i = r (mod W) at row i // W; pos is
  //   an i32 hash [2P] of the member slots; rows f64 [B, 8] (mutated) is
  //   required: the sum over shards of policy_dynamics' output for this
  //   batch (each entry's row as its owner had it after the entry's pass 1,
  //   quarantine_until as of this step). The step then runs on every shard
  //   as one whole-table step would; rows[b] of each index's last entry is
  //   the step's working copy of its row, and this shard's rows get the
  //   quarantine_until writes. Unsharded: rows must be None.
  //   CUDA (state on one device, config on the CPU; inputs int64/float64,
  //   contiguous, on the state's device): one device thread runs the step
  //   on the current stream; the host never waits. Shapes/dtypes/devices
  //   raise as on the CPU; values (ranges, signs, non-finite under 'raise')
  //   are checked on the device before any write: a bad step then runs as
  //   an update with no examples and leaves an error code in counters[10..12]
  //   (hardmix.Engine raises it at its next draw). Not sharded.
  //   slot_class (optional, i32 [R], contiguous, on the state's device,
  //   mutated): a cache of the heap class of each slot's member (-1: empty),
  //   as hardmix.Engine keeps it; the step keeps it so. With it and gamma =
  //   0, the O(R) rebuild of replay weights reads 4 bytes per slot instead
  //   of the slot's 64; results are the same with or without. A cache that
  //   disagrees with slots gives wrong replay weights (and draws that stop
  //   short), never a read or write out of bounds.
  //   Deterministic: a pure function of state, config, seed and inputs (the
  //   same bits on CPU and CUDA: csrc/kernels/policy.h).
  //   Cost: O(B log R + B log B) (+ O(B * W) for score 'loss_rank'; with
  //   quotas + O(K) in a step that evicts and O(B log K); + an O(R) rebase
  //   of replay weights every 64 / (gamma * lam) steps; with balance_replay
  //   + O(K) per step and O(R + K) every reweight_every steps); O(B + K)
  //   scratch only.
  m.def(
      "policy_update(Tensor(a!) table, Tensor(b!) pos, Tensor(c!) slots, "
      "Tensor(d!) links, Tensor(e!) heap, Tensor(f!) free, "
      "Tensor(g!) classes_state, Tensor(h!) tree, Tensor(i!) window, "
      "Tensor(j!) counters, Tensor(k!) balance, "
      "Tensor config, int seed, Tensor indices, Tensor losses, "
      "Tensor? margins, Tensor? classes, Tensor? priorities, Tensor? replayed=None, "
      "Tensor(l!)? rows=None, Tensor(m!)? slot_class=None) -> ()");

  // policy_dynamics(table, config, t, indices, losses, margins?, classes?,
  //                 priorities?, rows)
  //   Sharded table only: the first half of step t on one shard. For each
  //   entry b (in batch order) whose index this shard owns: the per-example
  //   dynamics of a valid entry (finite loss, margin and priority) on its
  //   table row (the strikes against its label read the batch's class
  //   tally), then that row into rows[b]; other rows[b] are not written.
  //   Inputs as for policy_update (indices in [0, N) of the whole dataset);
  //   rows f64 [B, 8] CPU contiguous (mutated). Checks run before any write.
  //   Deterministic. Cost: O(B).
  m.def(
      "policy_dynamics(Tensor(a!) table, Tensor config, int t, Tensor indices, "
      "Tensor losses, Tensor? margins, Tensor? classes, Tensor? priorities, Tensor(b!) rows) -> ()");

  // policy_find(pos, slots, config, indices, out)
  //   out[b] = the slot of member indices[b], or -1 if it is not a member
  //   (pos as an array [N] or, sharded, a hash [2P]). out i64 [B], CPU,
  //   contiguous, the only write. An index outside [0, N) raises.
  //   Deterministic. Cost: O(B) expected.
  m.def(
      "policy_find(Tensor pos, Tensor slots, Tensor config, Tensor indices, "
      "Tensor(a!) out) -> ()");

  // policy_draw(tree, slots, pos, counters, config, seed, exclude, out, facts?)
  //   The replay draw for the next batch: with out of m + 1 entries,
  //   out[0, n) = dataset indices of up to m members drawn without
  //   replacement with probability proportional to (decayed priority)^gamma,
  //   skipping members whose index is in exclude [E] (i64, in [0, N));
  //   (times the factor of the member's class with balance_replay: the
  //   tree's leaves hold the product);
  //   out[n, m) = -1 (n < m only when fewer members are eligible); out[m] = n.
  //   Uniforms: (seed, step, stream 2, r).
  //   Picks are made with replacement and rejected when excluded or already
  //   drawn (successive sampling). tree is written only for rejected picks and
  //   restored bit for bit before return; out (i64, contiguous) is the only
  //   lasting write. Deterministic. Cost: O(E + (m + X) log R) for X rejected
  //   picks (each member at most once); E + m scratch. CUDA (state, exclude
  //   and out on one device, config on the CPU): one device thread; an
  //   exclude index outside [0, N) leaves error code 5 in counters[10..12]
  //   and out = all -1, n = 0 (hardmix.Engine.draw raises it).
  //   facts (optional, f64 [E + m + 1], contiguous, on out's device; written
  //   in full): what importance weights need, in O(E + m) more: the weight
  //   of each exclude entry (0: not a member), of each drawn member (0 past
  //   n), and the eligible weight (the total less the distinct excluded
  //   members').
  m.def(
      "policy_draw(Tensor(a!) tree, Tensor slots, Tensor pos, Tensor counters, "
      "Tensor config, int seed, Tensor exclude, Tensor(b!) out, Tensor(c!)? facts=None) -> ()");
}
