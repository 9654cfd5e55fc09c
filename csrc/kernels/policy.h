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
// and, optionally, a cache derived from them (not part of the state):
//   slot_class int32 [R]     the heap class of each slot's member (-1: empty),
//                            as slots say; kept so by every step. It lets the
//                            O(R) rebuild of leaves read 4 bytes per slot, not
//                            a slot's 64.
//
// The structures over these arrays, one header each, as views:
//   slot_index.h    dataset index -> slot (pos)
//   member_heaps.h  the eviction order: the weakest member in O(1), O(log R)
//                   per change (slots' keys, links, heap, classes)
//   sum_tree.h      the replay weights; each pick is a descent, O(log R)
//   policy_layout.h the columns, counters and config fields (layout.py)
// and tickets.h, a step's admission tickets a batch at a time (vectorised on
// the host). This header holds the step (update) and the replay draw.
//
// Cost of update(): O(B log R) plus O(B * W) for the loss_rank score; with
// class quotas O(K) once in a step that evicts and O(log K) per change of a
// class's count (the largest class's tournament tree); an O(R) rebase of
// replay weights every REBASE_EXPONENT / (gamma * lam) steps (amortised); with
// balanced replay O(K) per step and an O(R + K) reweighting every
// reweight_every steps. No allocation beyond O(B + K) scratch. draw():
// O(E + (m + X) log R) for E excluded indices and X rejected picks (each
// member is rejected at most once).
#pragma once

#include <cstdint>

#include "member_heaps.h"
#include "policy_layout.h"
#include "rng.h"
#include "slot_index.h"
#include "sum_tree.h"
#include "tickets.h"
#include "util.h"

namespace hardmix {
namespace policy {

constexpr int64_t kPrefetch = 32;  // entries ahead whose rows and slots are prefetched
constexpr int64_t kDrawAhead = 32;  // replay picks found at once, at most, after the tree changed

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

HM_FN inline double softplus(double x) {
  if (x > 0) return x + rng::log1p_det(rng::exp_det(-x));
  return rng::log1p_det(rng::exp_det(x));
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

// Counts per class: an open-addressing table (linear probing; seen == 0:
// empty) over tally_cap(B) entries of scratch, at most half full, so that
// adding and finding are O(1) and a batch's counts O(B).
struct ClassCounts {
  ClassTally* table = nullptr;  // null: no counts
  int64_t mask = 0;

  HM_FN static ClassCounts cleared(ClassTally* buf, int64_t cap) {
    for (int64_t k = 0; k < cap; ++k) buf[k] = ClassTally{0, 0, 0};
    return ClassCounts{buf, cap - 1};
  }
  HM_FN int64_t home(int64_t cls) const { return static_cast<int64_t>(rng::mix13(static_cast<uint64_t>(cls))) & mask; }
  // The entry of class cls (seen == 0: none yet; the caller counts one).
  HM_FN ClassTally& at(int64_t cls) const {
    int64_t h = home(cls);
    while (table[h].seen > 0 && table[h].cls != cls) h = (h + 1) & mask;
    table[h].cls = cls;
    return table[h];
  }
  HM_FN const ClassTally* find(int64_t cls) const {
    int64_t h = home(cls);
    while (table[h].seen > 0 && table[h].cls != cls) h = (h + 1) & mask;
    return table[h].seen > 0 ? &table[h] : nullptr;
  }
};

// Scratch memory, from the caller, 8-byte aligned: update() needs
// update_scratch_bytes(B, view.quota_classes()), draw() draw_scratch_bytes(E, m)
// (a CPU thread keeps a buffer; the CUDA op allocates one on the device per call).
struct UpdateScratch {
  Entry* entries;
  ClassTally* tally;
  int64_t* last_at;
  int64_t* order;
  int64_t* pick;
  int64_t* dirty;
  double* tickets;   // [B]: each entry's ticket (read for the fresh ones)
  int32_t* largest;  // [2 * largest_leaves(K)], K: heap classes with class quotas, else 0
  uint8_t* allowed;
};

// The class tally: an open-addressing table of a power of two >= 2B (and >= 2)
// entries, so at most half full.
HM_FN inline int64_t tally_cap(int64_t B) { return pow2_at_least(2 * B, 2); }

// The leaves of the largest class's tournament tree over K heap classes (0: none).
HM_FN inline int64_t largest_leaves(int64_t K) { return K > 0 ? pow2_at_least(K, 1) : 0; }

// K: the heap classes with class quotas (their tournament tree), else 0.
HM_FN inline int64_t update_scratch_bytes(int64_t B, int64_t K) {
  return B * static_cast<int64_t>(sizeof(Entry) + 4 * sizeof(int64_t) + sizeof(double)) +
         tally_cap(B) * static_cast<int64_t>(sizeof(ClassTally)) +
         2 * largest_leaves(K) * static_cast<int64_t>(sizeof(int32_t)) + B + 8;
}

HM_FN inline UpdateScratch carve_update(void* buf, int64_t B, int64_t K) {
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
  s.tickets = reinterpret_cast<double*>(s.dirty + B);
  s.largest = reinterpret_cast<int32_t*>(s.tickets + B);
  s.allowed = reinterpret_cast<uint8_t*>(s.largest + 2 * largest_leaves(K));
  return s;
}

// The draw's set of excluded and drawn indices: open addressing, a power of
// two >= 16 and >= 2 (E + m) slots.
HM_FN inline int64_t draw_set_cap(int64_t E, int64_t m) { return pow2_at_least(2 * (E + m), 16); }

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
  int32_t* slot_class = nullptr;  // [R] optional cache (see the top of this file)
  int64_t N, R, K, P, W;
  Config cfg;
  // Sharded update only: rows[B][8], each entry's table row as its owner
  // had it after the entry's pass 1 (read in pass 1, the step's working copy
  // of the columns pass 2 uses).
  double* xrows = nullptr;
  void* scratch = nullptr;  // update_scratch_bytes(B, quota_classes()) / draw_scratch_bytes(E, m)

  // ---- accessors ----------------------------------------------------------
  HM_FN double* row(int64_t i) const { return table + i * kTableCols; }
  HM_FN bool sharded() const { return cfg.world > 0; }
  // The classes the largest class's tree in update()'s scratch is over: K with quotas, else 0.
  HM_FN int64_t quota_classes() const { return cfg.quotas ? K : 0; }
  // Sharded: the table row of example i if this shard owns it, else null.
  HM_FN double* owned_row(int64_t i) const {
    return i % cfg.world == cfg.rank ? table + (i / cfg.world) * kTableCols : nullptr;
  }
  HM_FN double* slot(int32_t j) const { return slots + static_cast<int64_t>(j) * kSlotFields; }
  HM_FN double* bal(int64_t hc) const { return balance + hc * kBalanceFields; }

  // The structures, as views of the state arrays.
  HM_FN SlotIndex index() const { return SlotIndex{pos, slots, P, sharded()}; }
  HM_FN MemberHeaps heaps() const { return MemberHeaps{slots, links, heap, classes, cfg.quotas}; }
  HM_FN SumTree sums() const { return SumTree{tree, P}; }

  HM_FN int32_t pos_get(int64_t i) const { return index().get(i); }
  HM_FN int64_t heap_class(double cls) const { return heaps().heap_class(cls); }
  HM_FN int64_t& count(int64_t hc) const { return heaps().count(hc); }

  // update()'s membership pass (the only writer of leaves besides the draw's
  // rejections and the rebuilds) writes leaves without their sums: leaf_set
  // lists them in `dirty` (at most one per batch entry: B-sized scratch) and
  // SumTree::fix recomputes the sums once when the pass ends.
  int64_t* dirty = nullptr;
  int64_t n_dirty = 0;

  HM_FN void leaf_set(int32_t j, double w) {
    tree[P + j] = w;
    dirty[n_dirty++] = P + j;
  }

  HM_FN void fix_sums() {
    sums().fix(dirty, n_dirty);
    dirty = nullptr;
    n_dirty = 0;
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
  // With gamma = 0 every weight is 1, so a leaf is its class's factor
  // (1 * f is f, bit for bit): read from the slot_class cache when there is one.
  HM_FN void rebuild_tree() {
    if (slot_class != nullptr && cfg.gamma == 0) {
      for (int64_t j = 0; j < R; ++j) {
        const int32_t c = slot_class[j];
        tree[P + j] = c >= 0 && c < K ? bal(c)[kBalFactor] : 0.0;  // (range-checked: no read out of bounds)
      }
    } else {
      for (int64_t j = 0; j < R; ++j) {
        tree[P + j] = slot(static_cast<int32_t>(j))[kIndex] < 0 ? 0.0 : leaf(static_cast<int32_t>(j));
      }
    }
    sums().sum_all();
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
    index().put(e.index, j);
    heaps().insert(j);
    count_add(heap_class(s[kClass]), 1);
    if (slot_class != nullptr) slot_class[j] = static_cast<int32_t>(heap_class(s[kClass]));
    leaf_set(j, leaf(j));
  }

  HM_FN void vacate(int32_t j, bool clear_leaf = true) {
    double* s = slot(j);
    const int64_t i = static_cast<int64_t>(s[kIndex]);
    heaps().remove(j);
    count_add(heap_class(s[kClass]), -1);
    index().erase(i);
    s[kIndex] = -1.0;
    if (slot_class != nullptr) slot_class[j] = -1;
    if (clear_leaf) leaf_set(j, 0.0);
  }

  HM_FN void push_free(int32_t j) { free[counters[kFreeTop]++] = j; }

  // ---- the largest class (class quotas) ------------------------------------
  // The heap class with the most members (ties: the lowest) is what an
  // eviction under class quotas needs. A tournament tree over the counts in
  // scratch answers it in O(1): leaf Kl + k is class k (-1 past K), each inner
  // node the winner of its two children. Built at a step's first eviction
  // (O(K)), kept through every count change after that (O(log K)).
  int32_t* largest = nullptr;  // [2 * Kl] scratch (class quotas), or null
  int64_t Kl = 0;
  bool largest_built = false;

  // The winner of two subtrees' winners, a's classes all below b's.
  HM_FN int32_t larger(int32_t a, int32_t b) const {
    if (a < 0 || b < 0) return a < 0 ? b : a;
    return count(b) > count(a) ? b : a;
  }

  HM_FN int64_t largest_class() {
    if (!largest_built) {
      for (int64_t k = 0; k < Kl; ++k) largest[Kl + k] = k < K ? static_cast<int32_t>(k) : -1;
      for (int64_t n = Kl - 1; n >= 1; --n) largest[n] = larger(largest[2 * n], largest[2 * n + 1]);
      largest_built = true;
    }
    return largest[1];
  }

  HM_FN void count_add(int64_t hc, int64_t d) {
    count(hc) += d;
    if (!largest_built) return;
    for (int64_t n = (Kl + hc) / 2; n >= 1; n /= 2) largest[n] = larger(largest[2 * n], largest[2 * n + 1]);
  }

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
  ClassCounts tally;  // no table without margins

  // Builds the tally of a batch into scratch `buf` (tally_cap(B) entries).
  HM_FN void build_tally(const Batch& in, ClassTally* buf) {
    tally = ClassCounts{};
    if (!in.margins) return;
    tally = ClassCounts::cleared(buf, tally_cap(in.B));
    for (int64_t b = 0; b < in.B; ++b) {
      if (!valid_input(in, b)) continue;
      ClassTally& c = tally.at(in.classes ? in.classes[b] : 0);
      c.right += in.margins[b] > 0 ? 1 : 0;
      c.seen += 1;
    }
  }

  HM_FN bool class_learned(int64_t cls) const {
    if (tally.table == nullptr) return false;
    const ClassTally* c = tally.find(cls);
    return c != nullptr && 4 * c->right >= c->seen;
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
    build_tally(in, carve_update(scratch, in.B, 0).tally);  // (the tally alone)
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

    const UpdateScratch sc = carve_update(scratch, in.B, quota_classes());
    largest = sc.largest;
    Kl = largest_leaves(quota_classes());
    largest_built = false;
    // (sharded, the owners ran the dynamics, which alone read the tally)
    if (sharded()) {
      tally = ClassCounts{};
    } else {
      build_tally(in, sc.tally);
    }
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
    // Each entry's ticket under this step's key (read for the fresh entries).
    const double* tickets = sc.tickets;
    rng::tickets(admit_key, in.indices, in.B, sc.tickets);
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
      const double g = fresh ? tickets[b] : 0.0;
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
          if (!cfg.quotas) HM_PREFETCH(&heaps().hpos(j), 0);
        }
      }
      if (!shard && b + kPrefetch < in.B && entries[b + kPrefetch].valid) {
        const int64_t i = entries[b + kPrefetch].index;
        const int32_t j = pos[i];
        if (j >= 0) {
          HM_PREFETCH(row(i), 1);  // read in pass 1, likely evicted since
          if (!cfg.quotas) HM_PREFETCH(heap + 2 * heaps().hpos(j), 1);
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
    fix_sums();
    if (cfg.balance) balance_step(in, entries, sc.tally, t);
    counters[kT] = t + 1;
  }

  // The class balance of replay at the end of step t (reference.py:
  // balance_step, reweight). O(B + K); O(R + K + P) more when reweighting.
  // `buf`: tally_cap(B) entries of scratch.
  HM_FN void balance_step(const Batch& in, const Entry* entries, ClassTally* buf, int64_t t) {
    double* total = bal(K);
    const ClassCounts fresh_of = ClassCounts::cleared(buf, tally_cap(in.B));
    int64_t n = 0;
    for (int64_t b = 0; b < in.B; ++b) {
      if (!entries[b].valid) continue;
      ++n;
      const int64_t hc = heap_class(static_cast<double>(entries[b].cls));
      if (bal(hc)[kBalSeen] == 0.0) {
        bal(hc)[kBalSeen] = 1.0;
        total[kBalSeen] += 1.0;
      }
      if (!(in.replayed && in.replayed[b])) fresh_of.at(hc).seen += 1;
    }
    const double d = kBalanceDecay;
    for (int64_t k = 0; k < K; ++k) {
      const ClassTally* c = fresh_of.find(k);
      const int64_t fresh = c != nullptr ? c->seen : 0;
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
      const double key = e.head + s[kTicket];
      if (key != s[kKey]) {  // (an unchanged key keeps its place: the weakest stays the weakest)
        s[kKey] = key;
        heaps().rekey(j);
      }
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
      const int64_t big = largest_class();
      if (count(e.cls) + 1 < count(big)) {
        replace(static_cast<int32_t>(heaps().root(big)), e, t);
        return;
      }
      victim = static_cast<int32_t>(heaps().root(count(e.cls) == 0 ? big : e.cls));
    } else {
      victim = static_cast<int32_t>(heaps().root(0));
    }
    const double vkey = heaps().root_key(victim);
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
      index().erase(static_cast<int64_t>(s[kIndex]));
      s[kIndex] = static_cast<double>(e.index);
      s[kKey] = e.key;
      s[kLogp] = e.logp;
      s[kStep] = static_cast<double>(t);
      s[kClass] = static_cast<double>(e.cls);
      s[kAdmitted] = static_cast<double>(t);
      s[kBestLoss] = e.loss;
      s[kTicket] = e.g;
      index().put(e.index, victim);
      heaps().rekey(victim);
      leaf_set(victim, leaf(victim));
#if !defined(__CUDA_ARCH__)
      // The next eviction takes the new weakest member: fetch its index entry
      // (its slot came with the last eviction's children), and the slots of its
      // children (the weakest after it, unless a newcomer is).
      const MemberHeaps hp = heaps();
      const double* next = slot(static_cast<int32_t>(hp.root(0)));
      for (int64_t c = 1; c <= MemberHeaps::kArity && c < count(0); ++c) HM_PREFETCH(slot(hp.bh_slot(c)), 1);
      if (!sharded()) HM_PREFETCH(pos + static_cast<int64_t>(next[kIndex]), 1);
#endif
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
        w = j >= 0 ? sums().leaf(j) : 0.0;
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
    // Picks are found ahead, kGroup descents at once: their loads are
    // independent, so their cache misses overlap. They stay valid while the
    // tree does not change, that is until a rejection; after one the rest
    // are found again on the changed tree, 1 at first, twice as many each
    // time all were taken, up to kDrawAhead: the descents found and not
    // used are at most 2m however many rejections there are. Either way each
    // pick is the descent of the same x in the same tree.
    const double total0 = sums().total();
    uint64_t ahead_end = 0;  // ahead[q] is pick r = ahead_end - ahead_n + q, for q < ahead_n
    int64_t ahead_n = 0;
    int64_t chunk = m;  // picks to find at the next refill (all until a rejection)
    int64_t n = 0;
    for (uint64_t r = 0; n < m; ++r) {
      const double total = sums().total();
      if (!(total > 0)) break;
      if (r >= ahead_end) {
        ahead_n = min_of<int64_t>(chunk, m - n);
        sums().find_many(ahead_n, [&](int64_t q) { return pick_x(r + static_cast<uint64_t>(q), total); }, ahead);
        ahead_end = r + static_cast<uint64_t>(ahead_n);
        chunk = min_of<int64_t>(2 * chunk, kDrawAhead);
        for (int64_t q = 0; q < min_of(kPrefetch, ahead_n); ++q) HM_PREFETCH(slot(ahead[q]), 0);
      }
      const int64_t q = ahead_n - static_cast<int64_t>(ahead_end - r);
      // The slots of the picks ahead (their dataset indices are read below).
      if (q + kPrefetch < ahead_n) HM_PREFETCH(slot(ahead[q + kPrefetch]), 0);
      const int32_t j = ahead[q];
      const int64_t index = static_cast<int64_t>(slot(j)[kIndex]);
      const int64_t h = slot_of(index);
      if (set[h] == index) {  // excluded or drawn already
        // At most E + m rejections in a consistent state (each excluded or drawn member
        // once); more means leaves on empty slots (a slot_class cache that disagreed with
        // the slots): stop rather than write past the scratch.
        if (n_zeroed == E + m) break;
        saved[n_zeroed] = sums().leaf(j);
        sums().set(j, 0.0);
        zeroed[n_zeroed++] = j;
        ahead_end = r + 1;  // the picks found ahead were on the tree before this change
        chunk = 1;
        continue;
      }
      set[h] = index;
      if (facts != nullptr) facts[E + n] = sums().leaf(j);
      out[n++] = index;
    }
    for (int64_t k = n_zeroed - 1; k >= 0; --k) sums().set(zeroed[k], saved[k]);
    if (facts != nullptr) {
      for (int64_t r = n; r < m; ++r) facts[E + r] = 0.0;
      facts[E + m] = total0 - excluded;
    }
    return n;
  }
};

}  // namespace policy
}  // namespace hardmix
