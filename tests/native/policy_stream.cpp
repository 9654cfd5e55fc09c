// A random-stream driver of csrc/kernels/policy.h, for sanitizer builds
// (scripts/sanitize.sh compiles it with -fsanitize=address,undefined).
//
// Runs random policies (every score, class quotas, replay balance, max_wrong,
// graduation, quarantine, caps, staleness, sharded tables of 1-3 shards) on
// random streams: batch sizes 0-264, repeated indices, NaN, +-inf, denormal,
// negative and huge losses, margins and priorities; replay draws with random
// exclusions. Inputs are what the ops pass on after their checks
// (csrc/ops/policy.cpp). Every few steps the state's invariants are checked
// (members <-> index map <-> free stack, heap counts, sum tree sums); with a
// sharded table every shard must hold the same replicated state.
//
//   policy_stream [--configs C] [--steps S] [--seed X]
//
// Exit status 0: every invariant held (a sanitizer report aborts the run).
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "policy.h"

namespace pk = hardmix::policy;

namespace {

// splitmix64: the driver's own random numbers.
struct Rand {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  int64_t below(int64_t n) { return n <= 0 ? 0 : static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
  double unit() { return static_cast<double>(next() >> 11) * 0x1p-53; }
  bool coin(double p) { return unit() < p; }
};

[[noreturn]] void fail(const char* what, int64_t cfg, int64_t step) {
  std::fprintf(stderr, "policy_stream: config %" PRId64 " step %" PRId64 ": %s\n", cfg, step, what);
  std::exit(1);
}

// A value for a loss, margin or priority: mostly ordinary, sometimes extreme.
double value(Rand& r, bool finite_only, bool nonnegative) {
  const int64_t k = r.below(20);
  double x;
  if (k == 0 && !finite_only) {
    x = std::numeric_limits<double>::quiet_NaN();
  } else if (k == 1 && !finite_only) {
    x = r.coin(0.5) ? HUGE_VAL : -HUGE_VAL;
  } else if (k == 2) {
    x = 4.9e-324 * static_cast<double>(1 + r.below(1000));  // denormal
  } else if (k == 3) {
    x = r.coin(0.5) ? 1e308 : 1e-300;
  } else if (k == 4) {
    x = 0.0;
  } else {
    x = -std::log(1.0 - r.unit()) * (r.coin(0.2) ? 50.0 : 1.0);
    if (r.coin(0.3)) x = -x;
  }
  if (nonnegative && x < 0) x = -x;  // priorities: the op refuses negatives
  return x;
}

// One shard's state, laid out as hardmix.engine.Engine makes it.
struct State {
  std::vector<double> table, slots, heap, tree, window, balance;
  std::vector<int32_t> pos, links, free;
  std::vector<int64_t> classes, counters;
  pk::PolicyView v{};

  State(const pk::Config& cfg, int64_t N, int64_t R, int64_t K, int64_t W, int64_t rows, bool sharded) {
    int64_t P = 1;
    while (P < R) P *= 2;
    table.assign(rows * pk::kTableCols, 0.0);
    for (int64_t i = 0; i < rows; ++i) {
      table[i * pk::kTableCols + pk::kLastSeen] = -1.0;
      table[i * pk::kTableCols + pk::kCorrect] = -1.0;
    }
    pos.assign(sharded ? 2 * P : N, -1);
    slots.assign(R * pk::kSlotFields, 0.0);
    for (int64_t j = 0; j < R; ++j) slots[j * pk::kSlotFields + pk::kIndex] = -1.0;
    links.assign(R * pk::kLinkFields, -1);
    heap.assign(R * 2, 0.0);
    free.resize(R);
    for (int64_t j = 0; j < R; ++j) free[j] = static_cast<int32_t>(R - 1 - j);
    classes.assign(K * 2, 0);
    for (int64_t c = 0; c < K; ++c) classes[c * 2] = -1;
    tree.assign(2 * P, 0.0);
    window.assign(W, 0.0);
    counters.assign(pk::kCounters, 0);
    counters[pk::kFreeTop] = R;
    balance.assign((K + 1) * pk::kBalanceFields, 0.0);
    for (int64_t c = 0; c < K; ++c) balance[c * pk::kBalanceFields + pk::kBalFactor] = 1.0;
    v.table = table.data();
    v.pos = pos.data();
    v.slots = slots.data();
    v.links = links.data();
    v.heap = heap.data();
    v.free = free.data();
    v.classes = classes.data();
    v.tree = tree.data();
    v.window = window.data();
    v.counters = counters.data();
    v.balance = balance.data();
    v.N = N;
    v.R = R;
    v.K = K;
    v.P = P;
    v.W = W;
    v.cfg = cfg;
  }
};

void check(const State& s, int64_t ci, int64_t step) {
  const pk::PolicyView& v = s.v;
  const int64_t top = v.counters[pk::kFreeTop];
  if (top < 0 || top > v.R) fail("free-stack top out of [0, R]", ci, step);
  std::vector<char> is_free(v.R, 0);
  for (int64_t k = 0; k < top; ++k) {
    const int32_t j = v.free[k];
    if (j < 0 || j >= v.R || is_free[j]) fail("free stack holds a bad or repeated slot", ci, step);
    is_free[j] = 1;
  }
  std::vector<int64_t> per_class(v.K, 0);
  int64_t members = 0;
  for (int32_t j = 0; j < v.R; ++j) {
    const double idx = v.slot(j)[pk::kIndex];
    if (idx < 0) {
      if (!is_free[j]) fail("an empty slot is not on the free stack", ci, step);
      if (v.tree[v.P + j] != 0.0) fail("an empty slot has replay weight", ci, step);
      continue;
    }
    if (is_free[j]) fail("a member's slot is on the free stack", ci, step);
    ++members;
    if (idx >= static_cast<double>(v.N)) fail("a member's index is out of range", ci, step);
    if (v.pos_get(static_cast<int64_t>(idx)) != j) fail("index map and slot disagree", ci, step);
    const double w = v.tree[v.P + j];
    if (!(w >= 0.0) || !std::isfinite(w)) fail("a replay weight is negative or not finite", ci, step);
    ++per_class[v.heap_class(v.slot(j)[pk::kClass])];
  }
  if (members != v.R - top) fail("members != R - free", ci, step);
  for (int64_t c = 0; c < v.K; ++c) {
    if (v.classes[c * 2 + 1] != per_class[c]) fail("a heap class's count is wrong", ci, step);
  }
  for (int64_t n = v.P - 1; n >= 1; --n) {
    if (v.tree[n] != v.tree[2 * n] + v.tree[2 * n + 1]) fail("a sum-tree node is not its children's sum", ci, step);
  }
  if (!std::isfinite(v.tree[1])) fail("the replay total is not finite", ci, step);
}

// draw()'s facts: each excluded and drawn index's leaf (0 for a non-member,
// and past the n drawn), then the total less the distinct excluded leaves
// (summed in the order given, as the draw does).
void check_facts(const State& s, const std::vector<int64_t>& exclude, const std::vector<int64_t>& out, int64_t n,
                 int64_t m, const std::vector<double>& facts, int64_t ci, int64_t step) {
  const pk::PolicyView& v = s.v;
  const int64_t E = static_cast<int64_t>(exclude.size());
  auto leaf = [&](int64_t i) {
    const int32_t j = v.pos_get(i);
    return j >= 0 ? v.tree[v.P + j] : 0.0;
  };
  double excluded = 0.0;
  for (int64_t k = 0; k < E; ++k) {
    if (facts[k] != leaf(exclude[k])) fail("draw facts: an excluded index's weight is wrong", ci, step);
    bool seen = false;
    for (int64_t q = 0; q < k; ++q) seen = seen || exclude[q] == exclude[k];
    if (!seen) excluded += facts[k];
  }
  for (int64_t k = 0; k < m; ++k) {
    if (facts[E + k] != (k < n ? leaf(out[k]) : 0.0)) fail("draw facts: a drawn member's weight is wrong", ci, step);
  }
  if (facts[E + m] != v.tree[1] - excluded) fail("draw facts: the eligible weight is wrong", ci, step);
}

// The state every shard replicates (slots, heaps, tree, counters, ...).
bool same_replicated(const State& a, const State& b) {
  return a.slots == b.slots && a.links == b.links && a.heap == b.heap && a.free == b.free &&
         a.classes == b.classes && a.tree == b.tree && a.window == b.window &&
         a.counters == b.counters && a.balance == b.balance && a.pos == b.pos;
}

void run_config(int64_t ci, int64_t steps, uint64_t seed) {
  Rand r{seed * 0x100000001b3ULL + static_cast<uint64_t>(ci)};
  const int64_t N = 1 + r.below(r.coin(0.2) ? 5000 : 200);
  const int64_t R = 1 + r.below(r.coin(0.2) ? 512 : 48);
  std::vector<double> c(pk::kConfigFields, 0.0);
  const int score = static_cast<int>(r.below(5));
  const bool quotas = r.coin(0.4);
  const int64_t num_classes = quotas || r.coin(0.5) ? 1 + r.below(6) : 0;
  c[pk::kAlpha] = r.coin(0.2) ? 0.0 : r.unit() * 4;
  c[pk::kLam] = r.coin(0.5) ? 0.0 : (r.coin(0.5) ? 0.05 : 3.0);  // 3: a rebase every few steps
  c[pk::kGamma] = r.coin(0.2) ? 0.0 : (r.coin(0.2) ? 2.0 + r.unit() * 8 : r.unit() * 2);
  c[pk::kEmaBeta] = r.unit() * 0.99;
  c[pk::kGraduation] = r.coin(0.6) ? 0.0 : r.unit();
  const bool margins_always = score == pk::kScoreMargin;
  c[pk::kMaxWrong] = r.coin(0.6) ? 0.0 : static_cast<double>(1 + r.below(3));
  c[pk::kQuarantineSteps] = static_cast<double>(r.below(20));
  c[pk::kMaxNew] = r.coin(0.6) ? 0.0 : static_cast<double>(1 + r.below(8));
  c[pk::kScore] = score;
  c[pk::kForgetBoost] = r.unit() * 3;
  c[pk::kQuotas] = quotas ? 1.0 : 0.0;
  c[pk::kNumClasses] = static_cast<double>(num_classes);
  c[pk::kRaiseNonfinite] = r.coin(0.3) ? 1.0 : 0.0;
  const int64_t world = r.coin(0.3) ? 1 + r.below(3) : 0;
  c[pk::kShardWorld] = static_cast<double>(world);
  c[pk::kNumExamples] = static_cast<double>(N);
  c[pk::kBalanceReplay] = quotas && r.coin(0.5) ? 1.0 : 0.0;
  c[pk::kReweightEvery] = static_cast<double>(1 + r.below(5));
  const int64_t K = quotas ? num_classes : 1;
  const int64_t W = 1 + r.below(64);
  const bool finite_only = c[pk::kRaiseNonfinite] != 0.0;
  const bool need_margins = margins_always || c[pk::kMaxWrong] != 0.0;
  const bool need_classes = quotas || num_classes > 0;

  std::vector<State> shards;
  const int64_t nshards = world == 0 ? 1 : world;
  for (int64_t rank = 0; rank < nshards; ++rank) {
    c[pk::kShardRank] = static_cast<double>(world == 0 ? 0 : rank);
    const pk::Config cfg = pk::Config::from(c.data(), r.next());
    const int64_t rows = world == 0 ? N : (N - rank + world - 1) / world;
    shards.emplace_back(cfg, N, R, K, W, rows, world != 0);
  }
  const uint64_t run_seed = r.next();
  for (State& s : shards) s.v.cfg.seed = run_seed;  // one seed: replicated draws and keys

  std::vector<int64_t> idx, cls, exclude, out;
  std::vector<double> facts;
  std::vector<double> loss, margin, prio, rows;
  std::vector<uint8_t> rep;
  std::vector<int64_t> scratch;
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t B = r.coin(0.05) ? 0 : r.coin(0.05) ? 65 + r.below(200) : 1 + r.below(64);
    idx.resize(B);
    loss.resize(B);
    margin.resize(B);
    prio.resize(B);
    cls.resize(B);
    rep.resize(B);
    const int64_t span = r.coin(0.3) ? 1 + r.below(N < 8 ? N : 8) : N;  // small spans: many repeats
    const int64_t lo = r.below(N - span + 1);
    for (int64_t b = 0; b < B; ++b) {
      idx[b] = lo + r.below(span);
      loss[b] = value(r, finite_only, false);
      margin[b] = value(r, finite_only, false);
      prio[b] = value(r, finite_only, true);
      cls[b] = num_classes > 0 ? r.below(num_classes) : r.below(16);
      rep[b] = r.coin(0.25) ? 1 : 0;
    }
    const bool with_margins = need_margins || r.coin(0.5);
    const bool with_classes = need_classes || r.coin(0.5);
    const pk::Batch in{B,
                       idx.data(),
                       loss.data(),
                       with_margins ? margin.data() : nullptr,
                       with_classes ? cls.data() : nullptr,
                       score == pk::kScoreGiven ? prio.data() : nullptr,
                       r.coin(0.5) ? rep.data() : nullptr};
    scratch.assign(pk::update_scratch_bytes(B, shards[0].v.quota_classes()) / 8 + 1, 0);
    if (world != 0) {
      rows.assign(B * pk::kTableCols, 0.0);
      std::vector<double> part(B * pk::kTableCols);
      const int64_t t = shards[0].counters[pk::kT];
      for (State& s : shards) {
        std::fill(part.begin(), part.end(), 0.0);
        s.v.scratch = scratch.data();
        s.v.owned_dynamics(in, t, part.data());
        for (size_t k = 0; k < part.size(); ++k) rows[k] += part[k];
      }
    }
    for (State& s : shards) {
      s.v.scratch = scratch.data();
      s.v.xrows = world != 0 ? rows.data() : nullptr;
      s.v.update(in);
    }

    const int64_t m = r.below(65);
    const int64_t E = r.below(65);
    exclude.resize(E);
    for (int64_t k = 0; k < E; ++k) exclude[k] = r.below(N);
    scratch.assign(pk::draw_scratch_bytes(E, m) / 8 + 1, 0);
    std::vector<int64_t> first;
    for (State& s : shards) {
      out.assign(m + 1, -1);
      s.v.scratch = scratch.data();
      const bool with_facts = (step & 1) != 0;  // (every other draw: facts must not change it)
      facts.assign(E + m + 1, -1.0);
      const int64_t n = s.v.draw(m, exclude.data(), E, out.data(), with_facts ? facts.data() : nullptr);
      if (n < 0 || n > m) fail("draw returned a bad count", ci, step);
      if (with_facts) check_facts(s, exclude, out, n, m, facts, ci, step);
      for (int64_t k = 0; k < n; ++k) {
        if (out[k] < 0 || out[k] >= N || s.v.pos_get(out[k]) < 0) fail("draw returned a non-member", ci, step);
        for (int64_t e = 0; e < E; ++e) {
          if (exclude[e] == out[k]) fail("draw returned an excluded index", ci, step);
        }
        for (int64_t q = 0; q < k; ++q) {
          if (out[q] == out[k]) fail("draw returned an index twice", ci, step);
        }
      }
      out.resize(n);
      if (&s == &shards[0]) {
        first = out;
      } else if (out != first) {
        fail("shards drew different members", ci, step);
      }
    }
    if (step % 8 == 7 || step == steps - 1) {
      for (const State& s : shards) check(s, ci, step);
      for (size_t k = 1; k < shards.size(); ++k) {
        if (!same_replicated(shards[0], shards[k])) fail("shards hold different replicated states", ci, step);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t configs = 200, steps = 400;
  uint64_t seed = 0;
  for (int a = 1; a + 1 < argc; a += 2) {
    if (std::strcmp(argv[a], "--configs") == 0) {
      configs = std::atoll(argv[a + 1]);
    } else if (std::strcmp(argv[a], "--steps") == 0) {
      steps = std::atoll(argv[a + 1]);
    } else if (std::strcmp(argv[a], "--seed") == 0) {
      seed = std::strtoull(argv[a + 1], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: policy_stream [--configs C] [--steps S] [--seed X]\n");
      return 2;
    }
  }
  for (int64_t ci = 0; ci < configs; ++ci) run_config(ci, steps, seed);
  std::printf("policy_stream: %" PRId64 " configs x %" PRId64 " steps (updates and draws), seed %" PRIu64
              ": every invariant held\n",
              configs, steps, seed);
  return 0;
}
