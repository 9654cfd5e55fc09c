// The hardmix policy on raw arrays: the native engine's core.
// Torch-free; csrc/ops/policy.cpp views the engine's state tensors as a
// PolicyView and calls update() / draw().
//
// The specification is python/hardmix/reference.py; every rule, formula and
// order of floating-point operations here mirrors it, so the two agree bit for
// bit. Read that docstring first; comments here explain the data structures.
//
// State (all arrays owned by the caller, i.e. by tensors in Python):
//   table    double [N][8]   per-example dynamics (columns: config.py)
//   pos      int32  [N]      dataset index -> slot, -1 if not a member
//   slots    double [R][8]   member per slot: index (-1: empty), key, log p,
//                            score step s, class, admission step, best loss,
//                            ticket (best admission draw since admission)
//   links    int32  [R][4]   per slot: leftist-heap links (left, right, parent,
//                            null-path length) with class quotas; without
//                            them, links[0, R) (flat) is each slot's position
//                            in the 4-ary heap
//   heap     double [R][2]   without class quotas: the 4-ary heap, entries
//                            (key, slot) in heap order
//   free     int32  [R]      stack of free slots (free[0, top))
//   classes  int64  [K][2]   per heap class: heap root slot (-1: none), count
//   tree     double [2P]     sum tree of replay weights, P = 2^ceil(log2 R)
//   window   double [W]      ring buffer of recent valid losses (loss_rank)
//   counters int64  [16]     step t, t_ref, totals, window and stack cursors
//   balance  double [K+1][3] replay balance: per heap class (fresh EMA, seen,
//                            factor), then the totals (fresh EMA, classes seen, 0)
//
// Eviction order: the weakest member (lowest key; ties: higher dataset index)
// must be found in O(1) and every change of membership or key costs O(log R).
// Without class quotas (one heap class) an implicit 4-ary min-heap does this
// with its keys inline, so a sift touches about one cache line per level, and
// an eviction is a single sift-down (the newcomer takes the victim's slot and
// heap entry). With class quotas each class is a leftist heap over the slots (a
// heap per class without per-class storage); insert, delete-any and rescore
// are O(log R) worst case there too.
// Replay: a binary sum tree over the slots; each pick is a descent, O(log R).
// (Binary rather than wider: a wider node saves cache lines per update, but
// makes each level of the descent a serial chain of dependent subtractions.)
//
// Cost of update(): O(B log R) plus O(B * W) for the loss_rank score and O(K)
// per cross-class eviction with class quotas; an O(R) rebase of replay weights
// every REBASE_EXPONENT / (gamma * lam) steps (amortised); with balanced
// replay O(K) per step and an O(R + K) reweighting every reweight_every
// steps. No allocation beyond B-sized scratch. draw(): O(E + (m + X) log R)
// for E excluded indices and X rejected picks (each member is rejected at
// most once).
#pragma once

#include <cstdint>

#include "rng.h"

// Every function below runs on the host (the CPU ops) and, compiled by nvcc,
// on the device (one thread runs a step: the policy is sequential by nature;
// csrc/cuda/policy.cu). So the code uses no std:: algorithm, container or
// math function: sorting and selection are the heap sort below, scratch
// memory comes from the caller (Scratch), and logarithms and exponentials are
// rng.h's own (+ - * / only), which is what makes CPU, CUDA and the Python
// reference agree to the bit.
#if defined(__CUDACC__)
#define HM_FN __host__ __device__
#else
#define HM_FN
#endif
#if defined(__CUDA_ARCH__)
#define HM_PREFETCH(p, rw) ((void)0)
#else
#define HM_PREFETCH(p, rw) __builtin_prefetch((p), (rw))
#endif

namespace hardmix {
namespace policy {

// Shared with python/hardmix/config.py.
constexpr uint64_t kStreamAdmit = 1;
constexpr uint64_t kStreamReplay = 2;
constexpr double kRebaseExponent = 64.0;
constexpr double kMaxWeightExponent = 600.0;  // replay weights <= e^600: the tree's total stays finite
constexpr double kBalanceDecay = 0.9;
constexpr int64_t kPrefetch = 32;  // entries ahead whose table row is prefetched

enum Col { kLastLoss, kEma, kSeen, kLastSeen, kCorrect, kForget, kWrong, kQuarantine };
constexpr int kTableCols = 8;
enum SlotField { kIndex, kKey, kLogp, kStep, kClass, kAdmitted, kBestLoss, kTicket };
constexpr int kSlotFields = 8;
enum Link { kLeft, kRight, kParent, kNpl };
constexpr int kLinkFields = 4;
enum Counter {
  kT,
  kTRef,
  kNonfinite,
  kAdmittedTotal,
  kEvictedTotal,
  kGraduatedTotal,
  kQuarantinedTotal,
  kWindowCount,
  kWindowHead,
  kFreeTop,
  kErrorCode,   // CUDA only: the first bad input of a skipped step (codes below)
  kErrorAt,     // its position in the batch (or in exclude)
  kErrorValue,  // the value (an int64, or a double's bits)
};
enum ErrorCode { kErrNone, kErrIndex, kErrClass, kErrNegative, kErrNonfinite, kErrExclude };
constexpr int kCounters = 16;
enum Score { kScoreLoss, kScoreMargin, kScoreRank, kScoreForgetting, kScoreGiven };

// The config vector (float64 tensor) in this order; see PolicyConfig.
enum ConfigField {
  kAlpha,
  kLam,
  kGamma,
  kEmaBeta,
  kGraduation,
  kMaxWrong,
  kQuarantineSteps,
  kMaxNew,
  kScore,
  kForgetBoost,
  kQuotas,
  kNumClasses,
  kRaiseNonfinite,
  kShardWorld = 13,  // 0: the whole table here; else the number of shards
  kShardRank,        // this shard: the indices i with i % world == rank
  kNumExamples,      // N (needed when the table is sharded)
  kBalanceReplay,    // 1: class-balanced replay (balance_replay)
  kReweightEvery,    // its class factors are recomputed every this many steps
};
constexpr int kConfigFields = 20;
enum BalanceField { kBalFresh, kBalSeen, kBalFactor };
constexpr int kBalanceFields = 3;

struct Config {
  double alpha, lam, gamma, ema_beta, graduation, forget_boost;
  int64_t max_wrong, quarantine_steps, max_new, num_classes, reweight_every;
  int64_t world, rank, num_examples;  // sharding (world 0: not sharded)
  int score;
  bool quotas, raise_nonfinite, balance;
  uint64_t seed;

  HM_FN static Config from(const double* c, uint64_t seed) {
    Config k;
    k.alpha = c[kAlpha];
    k.lam = c[kLam];
    k.gamma = c[kGamma];
    k.ema_beta = c[kEmaBeta];
    k.graduation = c[kGraduation];
    k.forget_boost = c[kForgetBoost];
    k.max_wrong = static_cast<int64_t>(c[kMaxWrong]);
    k.quarantine_steps = static_cast<int64_t>(c[kQuarantineSteps]);
    k.max_new = static_cast<int64_t>(c[kMaxNew]);
    k.num_classes = static_cast<int64_t>(c[kNumClasses]);
    k.score = static_cast<int>(c[kScore]);
    k.quotas = c[kQuotas] != 0.0;
    k.raise_nonfinite = c[kRaiseNonfinite] != 0.0;
    k.world = static_cast<int64_t>(c[kShardWorld]);
    k.rank = static_cast<int64_t>(c[kShardRank]);
    k.num_examples = static_cast<int64_t>(c[kNumExamples]);
    k.balance = c[kBalanceReplay] != 0.0;
    k.reweight_every = static_cast<int64_t>(c[kReweightEvery]);
    k.seed = seed;
    return k;
  }
};

// One step's input, already validated by the caller. Optional arrays are null.
struct Batch {
  int64_t B;
  const int64_t* indices;
  const double* losses;
  const double* margins;     // or null
  const int64_t* classes;    // or null
  const double* priorities;  // or null
  const uint8_t* replayed;   // or null (none): entries drawn from the reservoir
};

constexpr double kInf = __builtin_huge_val();

HM_FN inline double softplus(double x) {
  if (x > 0) return x + rng::log1p_det(rng::exp_det(-x));
  return rng::log1p_det(rng::exp_det(x));
}

// Exactly std::isfinite: x - x is 0 for finite x, NaN for inf and NaN.
HM_FN inline bool finite(double x) { return x - x == 0; }

template <class T>
HM_FN inline T min_of(T a, T b) { return b < a ? b : a; }
template <class T>
HM_FN inline T max_of(T a, T b) { return a < b ? b : a; }
template <class T>
HM_FN inline void swap_of(T& a, T& b) {
  T t = a;
  a = b;
  b = t;
}

// Sorts a[0, n) by `less` (a strict weak order): heap sort, O(n log n), in
// place, no recursion, no allocation (host and device alike). Not stable:
// every use here sorts by a total order, or only needs the groups. With
// 0 <= k < n, only the k largest are placed, sorted, in a[n - k, n) (the rest
// stays in heap order): O(n + k log n).
template <class T, class Less>
HM_FN void heap_sort(T* a, int64_t n, Less less, int64_t k = -1) {
  auto sift = [&](int64_t root, int64_t end) {
    for (;;) {
      int64_t c = 2 * root + 1;
      if (c >= end) return;
      if (c + 1 < end && less(a[c], a[c + 1])) ++c;
      if (!less(a[root], a[c])) return;
      swap_of(a[root], a[c]);
      root = c;
    }
  };
  for (int64_t r = n / 2 - 1; r >= 0; --r) sift(r, n);
  const int64_t last = k < 0 || k >= n ? 1 : n - k;
  for (int64_t end = n - 1; end >= last && end > 0; --end) {
    swap_of(a[0], a[end]);
    sift(0, end);
  }
}

// One entry of a step, after pass 1.
struct Entry {
  bool valid;
  int64_t index;
  double loss, p, logp, key;  // key: a candidate's (-inf when replayed: no candidate)
  int64_t cls;
  double quarantine;  // the row's quarantine_until as pass 1 saw it
  int64_t at;         // sharded: the batch position whose row copy pass 2 uses
  bool fresh;         // not replayed: an appearance in the stream, with a ticket
  double head, g;     // alpha * log p + lam * t; this step's ticket of the index
};

struct ClassTally {
  int64_t cls, right, seen;
};

// Scratch memory, from the caller: update() needs update_scratch_bytes(B),
// draw() draw_scratch_bytes(E, m), 8-byte aligned (a CPU thread keeps a
// buffer; the CUDA op allocates one on the device per call).
struct UpdateScratch {
  Entry* entries;
  ClassTally* tally;
  int64_t* last_at;
  int64_t* order;
  int64_t* pick;
  int64_t* dirty;
  uint8_t* allowed;
};

// The class tally: an open-addressing table of a power of two >= 2B (and >= 2)
// entries, so at most half full.
HM_FN inline int64_t tally_cap(int64_t B) {
  int64_t cap = 2;
  while (cap < 2 * B) cap *= 2;
  return cap;
}

HM_FN inline int64_t update_scratch_bytes(int64_t B) {
  return B * static_cast<int64_t>(sizeof(Entry) + 4 * sizeof(int64_t)) +
         tally_cap(B) * static_cast<int64_t>(sizeof(ClassTally)) + B + 8;
}

HM_FN inline UpdateScratch carve_update(void* buf, int64_t B) {
  char* p = static_cast<char*>(buf);
  UpdateScratch s;
  s.entries = reinterpret_cast<Entry*>(p);
  p += B * sizeof(Entry);
  s.tally = reinterpret_cast<ClassTally*>(p);
  p += tally_cap(B) * sizeof(ClassTally);
  s.last_at = reinterpret_cast<int64_t*>(p);
  s.order = s.last_at + B;
  s.pick = s.order + B;
  s.dirty = s.pick + B;
  s.allowed = reinterpret_cast<uint8_t*>(s.dirty + B);
  return s;
}

// The draw's set of excluded and drawn indices: open addressing, a power of
// two >= 16 and >= 2 (E + m) slots.
HM_FN inline int64_t draw_set_cap(int64_t E, int64_t m) {
  int64_t cap = 16;
  while (cap < 2 * (E + m)) cap *= 2;
  return cap;
}

HM_FN inline int64_t draw_scratch_bytes(int64_t E, int64_t m) {
  return draw_set_cap(E, m) * 8 + (E + m) * 8 + (E + m) * 4 + m * 4 + 8;
}

// A non-owning view of the state arrays, with the policy's operations.
struct PolicyView {
  double* table;
  int32_t* pos;
  double* slots;
  int32_t* links;
  double* heap;
  int32_t* free;
  int64_t* classes;
  double* tree;
  double* window;
  int64_t* counters;
  double* balance;  // [K + 1][kBalanceFields]
  int64_t N, R, K, P, W;
  Config cfg;
  // Sharded update only: rows[B][8], each entry's table row as its owner
  // had it after the entry's pass 1 (read in pass 1, the step's working copy
  // of the columns pass 2 uses).
  double* xrows = nullptr;
  void* scratch = nullptr;  // update_scratch_bytes(B) / draw_scratch_bytes(E, m)

  // ---- accessors ----------------------------------------------------------
  HM_FN double* row(int64_t i) const { return table + i * kTableCols; }
  HM_FN bool sharded() const { return cfg.world > 0; }
  // Sharded: the table row of example i if this shard owns it, else null.
  HM_FN double* owned_row(int64_t i) const {
    return i % cfg.world == cfg.rank ? table + (i / cfg.world) * kTableCols : nullptr;
  }
  HM_FN double* slot(int32_t j) const { return slots + static_cast<int64_t>(j) * kSlotFields; }
  HM_FN int32_t& link(int32_t j, Link f) const { return links[static_cast<int64_t>(j) * kLinkFields + f]; }
  HM_FN int32_t npl(int32_t j) const { return j < 0 ? 0 : link(j, kNpl); }
  HM_FN int64_t& root(int64_t hc) const { return classes[hc * 2]; }
  HM_FN int64_t& count(int64_t hc) const { return classes[hc * 2 + 1]; }
  HM_FN int64_t heap_class(double cls) const { return cfg.quotas ? static_cast<int64_t>(cls) : 0; }
  HM_FN double* bal(int64_t hc) const { return balance + hc * kBalanceFields; }

  // a is weaker than b: lower key; ties: higher dataset index.
  HM_FN bool weaker(int32_t a, int32_t b) const {
    const double ka = slot(a)[kKey], kb = slot(b)[kKey];
    return ka < kb || (ka == kb && slot(a)[kIndex] > slot(b)[kIndex]);
  }

  // ---- dataset index -> slot ----------------------------------------------
  // Not sharded: pos is an array [N]. Sharded (no N-sized state may be
  // replicated): pos is an open-addressing hash of the member slots [H], H =
  // 2P (load <= 1/2), -1 empty, linear probing; an entry's key is its slot's
  // dataset index, so nothing else is stored. Erasure shifts the probe run
  // back (no tombstones), so lookups stay O(1) expected however long it runs.
  HM_FN int64_t hmask() const { return 2 * P - 1; }
  HM_FN int64_t home(int64_t i) const { return static_cast<int64_t>(rng::mix13(static_cast<uint64_t>(i))) & hmask(); }

  HM_FN int32_t pos_get(int64_t i) const {
    if (!sharded()) return pos[i];
    for (int64_t h = home(i);; h = (h + 1) & hmask()) {
      const int32_t j = pos[h];
      if (j < 0 || slot(j)[kIndex] == static_cast<double>(i)) return j;
    }
  }

  // i is not a member; slot j already holds index i.
  HM_FN void pos_put(int64_t i, int32_t j) {
    if (!sharded()) {
      pos[i] = j;
      return;
    }
    int64_t h = home(i);
    while (pos[h] >= 0) h = (h + 1) & hmask();
    pos[h] = j;
  }

  // i is a member; its slot still holds index i.
  HM_FN void pos_erase(int64_t i) {
    if (!sharded()) {
      pos[i] = -1;
      return;
    }
    int64_t hole = home(i);
    while (slot(pos[hole])[kIndex] != static_cast<double>(i)) hole = (hole + 1) & hmask();
    for (int64_t k = (hole + 1) & hmask(); pos[k] >= 0; k = (k + 1) & hmask()) {
      // Entry k may fill the hole when the hole lies on its probe path
      // (cyclically between its home and k).
      const int64_t want = home(static_cast<int64_t>(slot(pos[k])[kIndex]));
      if (((k - want) & hmask()) >= ((k - hole) & hmask())) {
        pos[hole] = pos[k];
        hole = k;
      }
    }
    pos[hole] = -1;
  }

  // ---- leftist heaps over slots (root = weakest) ---------------------------
  // Melds two heaps given by their roots; returns the new root. The classic
  // recursion (the weaker root wins; its right subtree is melded with the
  // other heap; then children are swapped where the left's null-path length
  // is shorter), unrolled: down the right spines, whose length is O(log R),
  // then back up fixing each node, so no stack is needed (device code).
  HM_FN int32_t meld(int32_t a, int32_t b) {
    if (a < 0) return b;
    if (b < 0) return a;
    if (weaker(b, a)) swap_of(a, b);
    const int32_t top = a;
    int32_t cur = a;
    for (;;) {  // cur's right subtree := meld(its right subtree, b)
      int32_t r = link(cur, kRight);
      if (r >= 0 && weaker(b, r)) swap_of(r, b);
      if (r < 0) r = swap_b_out(b);
      link(cur, kRight) = r;
      link(r, kParent) = cur;
      if (b < 0) break;
      cur = r;
    }
    for (int32_t n = cur;; n = link(n, kParent)) {
      if (npl(link(n, kLeft)) < npl(link(n, kRight))) {
        swap_of(link(n, kLeft), link(n, kRight));
      }
      link(n, kNpl) = npl(link(n, kRight)) + 1;
      if (n == top) break;
    }
    return top;
  }

  // (meld: an empty right subtree melded with b is b, and nothing is left.)
  HM_FN static int32_t swap_b_out(int32_t& b) {
    const int32_t r = b;
    b = -1;
    return r;
  }

  // ---- 4-ary heap (no class quotas) ----------------------------------------
  // heap[2h] = key, heap[2h + 1] = slot of entry h; hpos(slot) = h. Four
  // children per node halve the depth of a binary heap, and they sit side by
  // side (64 bytes), so a sift-down reads about one cache line per level.
  // hpos reuses the links tensor as a compact int32 [R] (links holds leftist
  // links only with class quotas), small enough to stay in cache.
  static constexpr int64_t kArity = 4;
  HM_FN int32_t& hpos(int32_t j) const { return links[j]; }
  HM_FN int32_t bh_slot(int64_t h) const { return static_cast<int32_t>(heap[2 * h + 1]); }

  HM_FN bool bh_weaker(int64_t a, int64_t b) const {
    const double ka = heap[2 * a], kb = heap[2 * b];
    return ka < kb || (ka == kb && slot(bh_slot(a))[kIndex] > slot(bh_slot(b))[kIndex]);
  }

  HM_FN void bh_move(int64_t to, int64_t from) {
    heap[2 * to] = heap[2 * from];
    heap[2 * to + 1] = heap[2 * from + 1];
    hpos(bh_slot(to)) = static_cast<int32_t>(to);
  }

  // Restores heap order around entry h of a heap of n entries (the entry is
  // moved along a hole; each displaced entry is written once).
  HM_FN void bh_sift(int64_t h, int64_t n) {
    const double key = heap[2 * h], sl = heap[2 * h + 1];
    const double idx = slot(static_cast<int32_t>(sl))[kIndex];
    auto weaker_than_me = [&](int64_t a) {  // entry a is weaker than the moving entry
      const double ka = heap[2 * a];
      return ka < key || (ka == key && slot(bh_slot(a))[kIndex] > idx);
    };
    auto me_weaker_than = [&](int64_t a) {
      const double ka = heap[2 * a];
      return key < ka || (key == ka && idx > slot(bh_slot(a))[kIndex]);
    };
    int64_t hole = h;
    while (hole > 0 && me_weaker_than((hole - 1) / kArity)) {
      bh_move(hole, (hole - 1) / kArity);
      hole = (hole - 1) / kArity;
    }
    if (hole == h) {
      for (;;) {
        const int64_t first = kArity * hole + 1;
        if (first >= n) break;
        int64_t c = first;
        const int64_t last = min_of(first + kArity, n);
        for (int64_t k = first + 1; k < last; ++k) {
          if (bh_weaker(k, c)) c = k;
        }
        if (!weaker_than_me(c)) break;
        bh_move(hole, c);
        hole = c;
      }
    }
    heap[2 * hole] = key;
    heap[2 * hole + 1] = sl;
    hpos(static_cast<int32_t>(sl)) = static_cast<int32_t>(hole);
  }

  // ---- heap interface: one heap per heap class ------------------------------
  // Heap size = count(hc) when these are called (place/vacate keep it so).
  HM_FN void heap_insert(int32_t j) {
    const int64_t hc = heap_class(slot(j)[kClass]);
    if (!cfg.quotas) {
      const int64_t h = count(0);
      heap[2 * h] = slot(j)[kKey];
      heap[2 * h + 1] = static_cast<double>(j);
      bh_sift(h, h + 1);
      root(0) = bh_slot(0);
      return;
    }
    link(j, kLeft) = link(j, kRight) = link(j, kParent) = -1;
    link(j, kNpl) = 1;
    const int32_t r = meld(static_cast<int32_t>(root(hc)), j);
    link(r, kParent) = -1;
    root(hc) = r;
  }

  HM_FN void heap_remove(int32_t j) {
    const int64_t hc = heap_class(slot(j)[kClass]);
    if (!cfg.quotas) {
      const int64_t n = count(0) - 1;
      const int64_t h = hpos(j);
      if (h != n) {
        heap[2 * h] = heap[2 * n];
        heap[2 * h + 1] = heap[2 * n + 1];
        bh_sift(h, n);
      }
      root(0) = n > 0 ? bh_slot(0) : -1;
      return;
    }
    const int32_t c = meld(link(j, kLeft), link(j, kRight));
    int32_t p = link(j, kParent);
    if (c >= 0) link(c, kParent) = p;
    if (p < 0) {
      root(hc) = c;
      return;
    }
    if (link(p, kLeft) == j) {
      link(p, kLeft) = c;
    } else {
      link(p, kRight) = c;
    }
    // Restore the leftist property on the path up; stop once nothing changes.
    while (p >= 0) {
      if (npl(link(p, kLeft)) < npl(link(p, kRight))) {
        swap_of(link(p, kLeft), link(p, kRight));
      }
      const int32_t n = npl(link(p, kRight)) + 1;
      if (n == link(p, kNpl)) break;
      link(p, kNpl) = n;
      p = link(p, kParent);
    }
  }

  // The key of slot j (a member, same heap class) has changed.
  HM_FN void heap_rekey(int32_t j) {
    if (!cfg.quotas) {
      const int64_t h = hpos(j);
      heap[2 * h] = slot(j)[kKey];
      bh_sift(h, count(0));
      root(0) = bh_slot(0);
      return;
    }
    heap_remove(j);
    heap_insert(j);
  }

  // ---- sum tree -------------------------------------------------------------
  HM_FN void tree_set(int32_t j, double w) {
    int64_t k = P + j;
    tree[k] = w;
    for (k /= 2; k >= 1; k /= 2) tree[k] = tree[2 * k] + tree[2 * k + 1];
  }

  // During update()'s membership pass the sums wait: leaf_set writes the leaf
  // and lists it in `dirty`, and tree_fix recomputes each sum above the
  // listed leaves once, level by level, when the pass ends. Every sum is still
  // its children's final values added, so the tree is bit for bit what a
  // tree_set per leaf makes, for about half the additions and no chain of
  // dependent stores. (At most one leaf per batch entry: B-sized scratch.)
  int64_t* dirty = nullptr;
  int64_t n_dirty = 0;

  HM_FN void leaf_set(int32_t j, double w) {
    if (dirty == nullptr) {
      tree_set(j, w);
      return;
    }
    tree[P + j] = w;
    dirty[n_dirty++] = P + j;
  }

  // Sums are >= 0, so -1 marks a node already listed for its level.
  HM_FN void tree_fix() {
    int64_t* list = dirty;
    int64_t n = n_dirty;
    while (n > 0 && list[0] > 1) {
      int64_t up = 0;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t parent = list[k] / 2;
        if (tree[parent] != -1.0) {
          tree[parent] = -1.0;
          list[up++] = parent;
        }
      }
      for (int64_t k = 0; k < up; ++k) tree[list[k]] = tree[2 * list[k]] + tree[2 * list[k] + 1];
      n = up;
    }
    dirty = nullptr;
    n_dirty = 0;
  }

  // The leaf where the running sum passes x (0 <= x <= total, total > 0): go
  // left when the left sum is positive and x is below it (or the right sum is
  // 0), else subtract the left sum and go right. Never a leaf of weight 0.
  // tree_find_many does it for x(0) .. x(n-1) into out, kGroup descents
  // interleaved level by level (independent loads: their cache misses overlap).
  template <class X>
  HM_FN void tree_find_many(int64_t n, X x_of, int32_t* out) const {
    constexpr int kGroup = 8;
    for (int64_t g = 0; g < n; g += kGroup) {
      const int gn = static_cast<int>(min_of<int64_t>(kGroup, n - g));
      double x[kGroup];
      int64_t k[kGroup];
      for (int q = 0; q < gn; ++q) {
        x[q] = x_of(g + q);
        k[q] = 1;
      }
      for (int64_t level = P; level > 1; level /= 2) {
        for (int q = 0; q < gn; ++q) {  // branch-free: the direction is data
          const double left = tree[2 * k[q]], right = tree[2 * k[q] + 1];
          const bool go_left = left > 0 && (x[q] < left || right <= 0);
          x[q] = go_left ? x[q] : x[q] - left;
          k[q] = 2 * k[q] + (go_left ? 0 : 1);
        }
      }
      for (int q = 0; q < gn; ++q) out[g + q] = static_cast<int32_t>(k[q] - P);
    }
  }

  HM_FN int32_t tree_find(double x) const {
    int32_t leaf;
    tree_find_many(1, [x](int64_t) { return x; }, &leaf);
    return leaf;
  }

  HM_FN double weight(int32_t j) const {
    if (cfg.gamma == 0) return 1.0;
    const double* s = slot(j);
    const double x = cfg.gamma * (s[kLogp] + cfg.lam * static_cast<double>(
                                                 static_cast<int64_t>(s[kStep]) - counters[kTRef]));
    return rng::exp_det(x < kMaxWeightExponent ? x : kMaxWeightExponent);
  }

  // The leaf of member j in the sum tree: its weight times its class's factor.
  HM_FN double leaf(int32_t j) const { return weight(j) * bal(heap_class(slot(j)[kClass]))[kBalFactor]; }

  // Every leaf from the members (empty slots 0), then every sum: O(R + P).
  HM_FN void rebuild_tree() {
    for (int64_t j = 0; j < R; ++j) {
      tree[P + j] = slot(static_cast<int32_t>(j))[kIndex] < 0 ? 0.0 : leaf(static_cast<int32_t>(j));
    }
    for (int64_t k = P - 1; k >= 1; --k) tree[k] = tree[2 * k] + tree[2 * k + 1];
  }

  // ---- one step -------------------------------------------------------------
  // ---- the row columns pass 2 uses (wrong, quarantine) ---------------------
  // Not sharded: the table row. Sharded: the step's copy of the row (the last
  // entry of that index: its state after pass 1); a quarantine is also
  // written to the table if this shard owns the row, so each shard's rows end
  // as the whole table's would.
  HM_FN double* mrow(const Entry& e) const { return sharded() ? xrows + e.at * kTableCols : row(e.index); }

  HM_FN void set_quarantine(const Entry& e, double v) {
    mrow(e)[kQuarantine] = v;
    if (sharded()) {
      if (double* o = owned_row(e.index)) o[kQuarantine] = v;
    }
  }

  // ---- membership ---------------------------------------------------------
  HM_FN void place(int32_t j, const Entry& e, int64_t t) {
    double* s = slot(j);
    s[kIndex] = static_cast<double>(e.index);
    s[kKey] = e.key;
    s[kLogp] = e.logp;
    s[kStep] = static_cast<double>(t);
    s[kClass] = static_cast<double>(e.cls);
    s[kAdmitted] = static_cast<double>(t);
    s[kBestLoss] = e.loss;
    s[kTicket] = e.g;
    pos_put(e.index, j);
    heap_insert(j);
    count(heap_class(s[kClass])) += 1;
    leaf_set(j, leaf(j));
  }

  HM_FN void vacate(int32_t j, bool clear_leaf = true) {
    double* s = slot(j);
    const int64_t index = static_cast<int64_t>(s[kIndex]);
    heap_remove(j);
    count(heap_class(s[kClass])) -= 1;
    pos_erase(index);
    s[kIndex] = -1.0;
    if (clear_leaf) leaf_set(j, 0.0);
  }

  HM_FN void push_free(int32_t j) { free[counters[kFreeTop]++] = j; }

  HM_FN void rebase_if_due() {
    const int64_t t = counters[kT];
    if (cfg.gamma > 0 && cfg.lam > 0 &&
        cfg.gamma * cfg.lam * static_cast<double>(t - counters[kTRef]) > kRebaseExponent) {
      counters[kTRef] = t;
      rebuild_tree();
    }
  }

  // Whether an example was quarantined during this step's pass 2: only then
  // can a row's quarantine_until differ from what pass 1 saw (and be re-read).
  bool quarantined_this_step = false;

  HM_FN bool eligible(const Entry& e, int64_t t) const {
    const double q = quarantined_this_step ? mrow(e)[kQuarantine] : e.quarantine;
    if (pos_get(e.index) >= 0 || q > static_cast<double>(t) ||
        e.key == -kInf) {
      return false;
    }
    if (cfg.max_wrong > 0 && mrow(e)[kWrong] > 0) return false;  // suspected
    return !(cfg.graduation > 0 && e.p < cfg.graduation);
  }

  // This step's counts of right and seen valid entries per class (with
  // margins): an example is judged by its label only while at least a
  // quarter of its class in the batch is right; otherwise the class itself is
  // not learned yet (new, rare, or forgotten), which says nothing about the
  // label. (A quarter, not a half: with 40% label noise, mislabeled entries
  // can be most of a class in a batch.)
  // The tally is a hash table keyed by class (tally_cap(B) entries, linear
  // probing; seen == 0: empty), so building it is O(B) and a lookup O(1).
  const ClassTally* tallies = nullptr;  // null without margins
  int64_t tally_mask = 0;

  HM_FN int64_t tally_home(int64_t cls) const {
    return static_cast<int64_t>(rng::mix13(static_cast<uint64_t>(cls))) & tally_mask;
  }

  // Builds the tally of a batch into scratch `tally` (tally_cap(B) entries).
  HM_FN void build_tally(const Batch& in, ClassTally* tally) {
    tallies = nullptr;
    if (!in.margins) return;
    const int64_t cap = tally_cap(in.B);
    tally_mask = cap - 1;
    for (int64_t k = 0; k < cap; ++k) tally[k] = ClassTally{0, 0, 0};
    for (int64_t b = 0; b < in.B; ++b) {
      if (!valid_input(in, b)) continue;
      const int64_t cls = in.classes ? in.classes[b] : 0;
      int64_t h = tally_home(cls);
      while (tally[h].seen > 0 && tally[h].cls != cls) h = (h + 1) & tally_mask;
      tally[h].cls = cls;
      tally[h].right += in.margins[b] > 0 ? 1 : 0;
      tally[h].seen += 1;
    }
    tallies = tally;
  }

  HM_FN bool class_learned(int64_t cls) const {
    if (tallies == nullptr) return false;
    int64_t h = tally_home(cls);
    while (tallies[h].seen > 0 && tallies[h].cls != cls) h = (h + 1) & tally_mask;
    return tallies[h].seen > 0 && 4 * tallies[h].right >= tallies[h].seen;
  }

  HM_FN static bool valid_input(const Batch& in, int64_t b) {
    return finite(in.losses[b]) && (!in.margins || finite(in.margins[b])) &&
           (!in.priorities || finite(in.priorities[b]));
  }

  // Pass 1's dynamics of a valid entry b on its table row r, at step t.
  HM_FN void dynamics(double* r, const Batch& in, int64_t b, int64_t t) const {
    const double loss = in.losses[b];
    r[kEma] = r[kSeen] == 0 ? loss : cfg.ema_beta * r[kEma] + (1.0 - cfg.ema_beta) * loss;
    r[kLastLoss] = loss;
    r[kSeen] += 1.0;
    r[kLastSeen] = static_cast<double>(t);
    if (in.margins) {
      const double correct = in.margins[b] > 0 ? 1.0 : 0.0;
      if (r[kCorrect] == 1.0 && correct == 0.0) r[kForget] += 1.0;
      r[kCorrect] = correct;
      if (r[kWrong] >= 0 && class_learned(in.classes ? in.classes[b] : 0)) {
        r[kWrong] = correct == 1.0 ? -1.0 : r[kWrong] + 1.0;
      }
    }
  }

  // Sharded, on every shard, first half of the step that will run as step t:
  // the dynamics of the entries this shard owns (in batch order), and each
  // owned entry's row after its update into rows[b] (others untouched). The
  // rows of all shards, summed (each entry has one owner), are the input of
  // update() on every shard. O(B).
  HM_FN void owned_dynamics(const Batch& in, int64_t t, double* rows) {
    build_tally(in, carve_update(scratch, in.B).tally);
    for (int64_t b = 0; b < in.B; ++b) {
      double* r = owned_row(in.indices[b]);
      if (r == nullptr) continue;
      if (valid_input(in, b)) dynamics(r, in, b, t);
      for (int c = 0; c < kTableCols; ++c) rows[b * kTableCols + c] = r[c];
    }
  }

  HM_FN void update(const Batch& in) {
    const int64_t t = counters[kT];
    rebase_if_due();
    // This step's tickets, by index (reference.py: the key).
    const uint64_t admit_key = rng::stream_key(cfg.seed, static_cast<uint64_t>(t), kStreamAdmit);
    const int64_t win_n = counters[kWindowCount];

    const UpdateScratch sc = carve_update(scratch, in.B);
    build_tally(in, sc.tally);
    Entry* entries = sc.entries;
    for (int64_t b = 0; b < in.B; ++b) entries[b] = Entry{};
    const int64_t* last = nullptr;  // sharded: each entry's last position of its index in the batch
    if (sharded()) {
      int64_t* last_at = sc.last_at;
      int64_t* order = sc.order;
      for (int64_t b = 0; b < in.B; ++b) order[b] = b;
      heap_sort(order, in.B, [&](int64_t x, int64_t y) {
        return in.indices[x] != in.indices[y] ? in.indices[x] < in.indices[y] : x < y;
      });
      for (int64_t k = in.B - 1; k >= 0; --k) {
        const bool end = k == in.B - 1 || in.indices[order[k + 1]] != in.indices[order[k]];
        last_at[order[k]] = end ? order[k] : last_at[order[k + 1]];
      }
      last = last_at;
    }
    // Pass 1: dynamics and scores.
    const bool shard = sharded();
    for (int64_t b = 0; b < in.B; ++b) {
      if (!shard && b + kPrefetch < in.B) {  // the table is N-sized: start its cache misses early
        HM_PREFETCH(row(in.indices[b + kPrefetch]), 1);
        HM_PREFETCH(pos + in.indices[b + kPrefetch], 0);
      }
      Entry& e = entries[b];
      const int64_t i = in.indices[b];
      const double loss = in.losses[b];
      const double mu = in.margins ? in.margins[b] : 0.0;
      const double given = in.priorities ? in.priorities[b] : 0.0;
      if (!valid_input(in, b)) {
        counters[kNonfinite] += 1;
        e.valid = false;
        continue;
      }
      // Sharded: the owner ran the dynamics (owned_dynamics); its row copy.
      double* r = shard ? xrows + b * kTableCols : row(i);
      if (!shard) dynamics(r, in, b, t);
      double p;
      switch (cfg.score) {
        case kScoreLoss:
          p = max_of(loss, 0.0);
          break;
        case kScoreMargin:
          p = softplus(-mu);
          break;
        case kScoreRank: {
          int64_t less = 0, equal = 0;
          for (int64_t k = 0; k < win_n; ++k) {
            less += window[k] < loss;
            equal += window[k] == loss;
          }
          p = (static_cast<double>(less) + 0.5 * static_cast<double>(equal) + 0.5) /
              static_cast<double>(win_n + 1);
          break;
        }
        case kScoreForgetting:
          p = max_of(loss, 0.0) * (1.0 + cfg.forget_boost * r[kForget]);
          break;
        default:
          p = given;
      }
      const double logp = p > 0 ? rng::log_det(p) : -kInf;
      const double base = cfg.alpha == 0 ? 0.0 : cfg.alpha * logp;
      const double head = base + cfg.lam * static_cast<double>(t);
      const bool fresh = !(in.replayed && in.replayed[b]);
      // (a replayed entry is no candidate and renews no ticket: its ticket is never read)
      const double g =
          fresh ? rng::to_gumbel(rng::to_uniform(rng::draw_bits(admit_key, static_cast<uint64_t>(i)))) : 0.0;
      e = Entry{true, i, loss, p, logp, fresh ? head + g : -kInf,
                in.classes ? in.classes[b] : 0, r[kQuarantine], shard ? last[b] : b, fresh, head, g};
    }
    {
      int64_t head = counters[kWindowHead], filled = counters[kWindowCount];
      for (int64_t b = 0; b < in.B; ++b) {
        if (!entries[b].valid) continue;
        window[head] = entries[b].loss;
        head = head + 1 == W ? 0 : head + 1;  // (no division: this runs B times a step)
        filled = min_of(filled + 1, W);
      }
      counters[kWindowHead] = head;
      counters[kWindowCount] = filled;
    }

    // The cap on new members: the k best eligible candidates (key, then lower
    // index, then batch position).
    const bool capped = cfg.max_new > 0;
    uint8_t* allowed = sc.allowed;
    if (capped) {
      int64_t* pick = sc.pick;
      int64_t np = 0;
      for (int64_t b = 0; b < in.B; ++b) {
        allowed[b] = 0;
        if (entries[b].valid && eligible(entries[b], t)) pick[np++] = b;
      }
      auto worse = [&](int64_t x, int64_t y) {  // x is worse than y
        const Entry &ex = entries[x], &ey = entries[y];
        if (ex.key != ey.key) return ex.key < ey.key;
        if (ex.index != ey.index) return ex.index > ey.index;
        return x > y;
      };
      const int64_t k = min_of<int64_t>(cfg.max_new, np);
      if (k < np) heap_sort(pick, np, worse, k);  // the k best into pick[np - k, np)
      for (int64_t n = np - k; n < np; ++n) allowed[pick[n]] = 1;
    }

    // Pass 2: membership.
    quarantined_this_step = false;
    dirty = sc.dirty;
    for (int64_t b = 0; b < in.B; ++b) {
      // Members ahead will be rescored: fetch their slot and heap position
      // (far ahead), then their heap entry and the bottom of their sum-tree
      // path (nearer, once the position has arrived).
      if (!shard && b + 2 * kPrefetch < in.B && entries[b + 2 * kPrefetch].valid) {
        const int32_t j = pos[entries[b + 2 * kPrefetch].index];
        if (j >= 0) {
          HM_PREFETCH(slot(j), 1);
          if (!cfg.quotas) HM_PREFETCH(&hpos(j), 0);
        }
      }
      if (!shard && b + kPrefetch < in.B && entries[b + kPrefetch].valid) {
        const int64_t i = entries[b + kPrefetch].index;
        const int32_t j = pos[i];
        if (j >= 0) {
          HM_PREFETCH(row(i), 1);  // read in pass 1, likely evicted since
          if (!cfg.quotas) HM_PREFETCH(heap + 2 * hpos(j), 1);
          HM_PREFETCH(tree + P + j, 1);
          HM_PREFETCH(tree + (P + j) / 2, 1);
          HM_PREFETCH(tree + (P + j) / 4, 1);
        }
      }
      const Entry& e = entries[b];
      if (!e.valid) continue;
      if (pos_get(e.index) >= 0) {
        rescore(e, t);
      } else if (eligible(e, t) && (!capped || allowed[b])) {
        offer(e, t);
      }
    }
    tree_fix();
    if (cfg.balance) balance_step(in, entries, sc.tally, t);
    counters[kT] = t + 1;
  }

  // The class balance of replay at the end of step t (reference.py:
  // balance_step, reweight). O(B log B + K); O(R + K + P) more when
  // reweighting. `counts` is B-sized scratch.
  HM_FN void balance_step(const Batch& in, const Entry* entries, ClassTally* counts, int64_t t) {
    double* total = bal(K);
    int64_t n = 0, nc = 0;
    for (int64_t b = 0; b < in.B; ++b) {
      if (!entries[b].valid) continue;
      ++n;
      const int64_t hc = heap_class(static_cast<double>(entries[b].cls));
      if (bal(hc)[kBalSeen] == 0.0) {
        bal(hc)[kBalSeen] = 1.0;
        total[kBalSeen] += 1.0;
      }
      if (!(in.replayed && in.replayed[b])) counts[nc++] = ClassTally{hc, 1, 1};
    }
    heap_sort(counts, nc, [](const ClassTally& x, const ClassTally& y) { return x.cls < y.cls; });
    const double d = kBalanceDecay;
    int64_t at = 0;
    for (int64_t k = 0; k < K; ++k) {
      int64_t fresh = 0;
      while (at < nc && counts[at].cls == k) fresh += counts[at++].right;
      bal(k)[kBalFresh] = d * bal(k)[kBalFresh] + (1.0 - d) * static_cast<double>(fresh);
    }
    total[kBalFresh] = d * total[kBalFresh] + (1.0 - d) * static_cast<double>(n);
    if ((t + 1) % cfg.reweight_every == 0) reweight();
  }

  // New class factors from the balance state, and every leaf with them.
  HM_FN void reweight() {
    const double* total = bal(K);
    if (total[kBalSeen] == 0.0) return;
    const double share = total[kBalFresh] / total[kBalSeen];
    auto deficit = [&](int64_t k) {
      return bal(k)[kBalSeen] == 1.0 ? max_of(0.0, share - bal(k)[kBalFresh]) : 0.0;
    };
    bool any = false;
    for (int64_t k = 0; k < K; ++k) any = any || (count(k) > 0 && deficit(k) > 0);
    for (int64_t k = 0; k < K; ++k) {
      bal(k)[kBalFactor] = (any ? deficit(k) : 1.0) / static_cast<double>(max_of<int64_t>(count(k), 1));
    }
    rebuild_tree();
  }

  HM_FN void rescore(const Entry& e, int64_t t) {
    const int32_t j = pos_get(e.index);
    double* s = slot(j);
    if (e.loss < s[kBestLoss]) s[kBestLoss] = e.loss;
    if (cfg.graduation > 0 && e.p < cfg.graduation) {
      vacate(j);
      push_free(j);
      counters[kGraduatedTotal] += 1;
    } else if (cfg.max_wrong > 0 && mrow(e)[kWrong] >= static_cast<double>(cfg.max_wrong)) {
      vacate(j);
      push_free(j);
      set_quarantine(e, static_cast<double>(t + cfg.quarantine_steps));
      quarantined_this_step = true;
      counters[kQuarantinedTotal] += 1;
    } else {
      if (e.fresh) s[kTicket] = max_of(s[kTicket], e.g);
      s[kLogp] = e.logp;
      s[kStep] = static_cast<double>(t);
      s[kKey] = e.head + s[kTicket];
      heap_rekey(j);
      leaf_set(j, leaf(j));
    }
  }

  HM_FN void offer(const Entry& e, int64_t t) {
    if (counters[kFreeTop] > 0) {
      const int32_t j = free[--counters[kFreeTop]];
      place(j, e, t);
      counters[kAdmittedTotal] += 1;
      return;
    }
    int32_t victim;
    if (cfg.quotas) {
      int64_t largest = 0;
      for (int64_t k = 1; k < K; ++k) {
        if (count(k) > count(largest)) largest = k;
      }
      if (count(e.cls) + 1 < count(largest)) {
        replace(static_cast<int32_t>(root(largest)), e, t);
        return;
      }
      victim = static_cast<int32_t>(root(count(e.cls) == 0 ? largest : e.cls));
    } else {
      victim = static_cast<int32_t>(root(0));
    }
    // (without quotas the weakest key sits at the top of the 4-ary heap: hot)
    const double vkey = cfg.quotas ? slot(victim)[kKey] : heap[0];
    if (e.key > vkey || (e.key == vkey && static_cast<double>(e.index) < slot(victim)[kIndex])) {
      replace(victim, e, t);
    }
  }

  HM_FN void replace(int32_t victim, const Entry& e, int64_t t) {
    if (cfg.quotas) {  // the classes may differ: out of one heap, into another
      vacate(victim, /*clear_leaf=*/false);  // place() sets the leaf anyway
      place(victim, e, t);
    } else {  // one heap: the newcomer takes the victim's slot and heap entry
      double* s = slot(victim);
      pos_erase(static_cast<int64_t>(s[kIndex]));
      s[kIndex] = static_cast<double>(e.index);
      s[kKey] = e.key;
      s[kLogp] = e.logp;
      s[kStep] = static_cast<double>(t);
      s[kClass] = static_cast<double>(e.cls);
      s[kAdmitted] = static_cast<double>(t);
      s[kBestLoss] = e.loss;
      s[kTicket] = e.g;
      pos_put(e.index, victim);
      heap_rekey(victim);
      leaf_set(victim, leaf(victim));
      // The next eviction will touch the new weakest member's slot: fetch it now.
      HM_PREFETCH(slot(static_cast<int32_t>(root(0))), 1);
    }
    counters[kEvictedTotal] += 1;
    counters[kAdmittedTotal] += 1;
  }

  // ---- replay draw ----------------------------------------------------------
  // Up to m members' dataset indices into out[0, n); returns n. Draw r (r = 0,
  // 1, ...) takes uniform r and picks a slot with probability proportional to
  // its weight, *with* replacement; a pick that is excluded (exclude[0, E)) or
  // already drawn is rejected, and its leaf set to 0 so that it cannot come up
  // again. Rejection keeps the distribution of drawing without replacement
  // among the others (successive sampling), and in the usual case (m small
  // against the reservoir) the tree is only read. Zeroed leaves are restored
  // to their saved values before return.
  // facts (optional, [E + m + 1]): what the batch's importance weights need
  // (hardmix.sampler): facts[k] the weight of exclude[k] (0: not a member),
  // facts[E + r] that of the r-th drawn member (0 past n), and facts[E + m]
  // the eligible weight (the total less the distinct excluded members').
  HM_FN int64_t draw(int64_t m, const int64_t* exclude, int64_t E, int64_t* out, double* facts = nullptr) {
    // Excluded and drawn dataset indices, in a small open-addressing set.
    const int64_t cap = draw_set_cap(E, m);
    int64_t* set = static_cast<int64_t*>(scratch);
    double* saved = reinterpret_cast<double*>(set + cap);  // the zeroed leaves' values
    int32_t* zeroed = reinterpret_cast<int32_t*>(saved + (E + m));  // at most E + m (each member once)
    int32_t* ahead = zeroed + (E + m);
    int64_t n_zeroed = 0;
    for (int64_t h = 0; h < cap; ++h) set[h] = -1;
    const int64_t mask = cap - 1;
    auto slot_of = [&](int64_t i) {
      int64_t h = static_cast<int64_t>(rng::mix13(static_cast<uint64_t>(i)) & static_cast<uint64_t>(mask));
      while (set[h] >= 0 && set[h] != i) h = (h + 1) & mask;
      return h;
    };
    double excluded = 0.0;
    for (int64_t k = 0; k < E; ++k) {
#if !defined(__CUDA_ARCH__)
      if (facts != nullptr && !sharded()) {  // the members' leaves: fetch the slot far ahead, the leaf nearer
        if (k + 2 * kPrefetch < E) HM_PREFETCH(pos + exclude[k + 2 * kPrefetch], 0);
        if (k + kPrefetch < E) {
          const int32_t j = pos[exclude[k + kPrefetch]];
          if (j >= 0) HM_PREFETCH(tree + P + j, 0);
        }
      }
#endif
      const int64_t h = slot_of(exclude[k]);
      double w = 0.0;
      if (facts != nullptr) {
        const int32_t j = pos_get(exclude[k]);
        w = j >= 0 ? tree[P + j] : 0.0;
        facts[k] = w;
      }
      if (set[h] != exclude[k]) excluded += w;  // (an index given twice counts once)
      set[h] = exclude[k];
    }
    const uint64_t key =
        rng::stream_key(cfg.seed, static_cast<uint64_t>(counters[kT]), kStreamReplay);
    auto pick_x = [&](uint64_t r, double total) {
      return rng::to_uniform(rng::draw_bits(key, r)) * total;
    };
    // Until the first rejection the tree does not change, so the picks of
    // r = 0 .. m-1 can be found up front, kGroup descents at a time: their
    // loads are independent, so their cache misses overlap. From the first
    // rejection on, picks are made one by one on the changed tree. Either
    // way each pick is the descent of the same x in the same tree.
    const double total0 = tree[1];
    if (total0 > 0) tree_find_many(m, [&](int64_t r) { return pick_x(static_cast<uint64_t>(r), total0); }, ahead);
    bool changed = false;
    int64_t n = 0;
    for (uint64_t r = 0; n < m; ++r) {
      const double total = tree[1];
      if (!(total > 0)) break;
      const int32_t j = changed || r >= static_cast<uint64_t>(m) ? tree_find(pick_x(r, total)) : ahead[r];
      const int64_t index = static_cast<int64_t>(slot(j)[kIndex]);
      const int64_t h = slot_of(index);
      if (set[h] == index) {  // excluded or drawn already
        saved[n_zeroed] = tree[P + j];
        tree_set(j, 0.0);
        zeroed[n_zeroed++] = j;
        changed = true;
        continue;
      }
      set[h] = index;
      if (facts != nullptr) facts[E + n] = tree[P + j];
      out[n++] = index;
    }
    for (int64_t k = n_zeroed - 1; k >= 0; --k) tree_set(zeroed[k], saved[k]);
    if (facts != nullptr) {
      for (int64_t r = n; r < m; ++r) facts[E + r] = 0.0;
      facts[E + m] = total0 - excluded;
    }
    return n;
  }
};

}  // namespace policy
}  // namespace hardmix
