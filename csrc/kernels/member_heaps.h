// The eviction order of the reservoir's members: the weakest member (lowest
// key; ties: higher dataset index) in O(1), and O(log R) per change of
// membership or key. One heap per heap class: without class quotas one
// implicit 4-ary min-heap with its keys inline (the `heap` state tensor;
// `links` holds each slot's position in it), with them a leftist heap per
// class over the slots (`links`: left, right, parent, null-path length).
// `classes` holds each heap class's root slot and member count.
#pragma once

#include <cstdint>

#include "policy_layout.h"
#include "util.h"

namespace hardmix {
namespace policy {

struct MemberHeaps {
  double* slots;     // [R][kSlotFields]: the keys, dataset indices and classes heaps order by
  int32_t* links;    // [R][kLinkFields]
  double* heap;      // [R][2]
  int64_t* classes;  // [K][kHeapClassFields]: root slot (-1: none), count
  bool quotas;       // a heap per class (class quotas), or one heap

  HM_FN double* slot(int32_t j) const { return slots + static_cast<int64_t>(j) * kSlotFields; }
  HM_FN int32_t& link(int32_t j, Link f) const { return links[static_cast<int64_t>(j) * kLinkFields + f]; }
  HM_FN int32_t npl(int32_t j) const { return j < 0 ? 0 : link(j, kNpl); }
  HM_FN int64_t& root(int64_t hc) const { return classes[hc * kHeapClassFields + kClassRoot]; }
  HM_FN int64_t& count(int64_t hc) const { return classes[hc * kHeapClassFields + kClassCount]; }
  HM_FN int64_t heap_class(double cls) const { return quotas ? static_cast<int64_t>(cls) : 0; }

  // a is weaker than b: lower key; ties: higher dataset index.
  HM_FN bool weaker(int32_t a, int32_t b) const {
    const double ka = slot(a)[kKey], kb = slot(b)[kKey];
    return ka < kb || (ka == kb && slot(a)[kIndex] > slot(b)[kIndex]);
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
#if !defined(__CUDA_ARCH__)
      // The next step reads the key of the right child of r or of b (whichever
      // becomes cur): fetch both now.
      if (r >= 0 && link(r, kRight) >= 0) HM_PREFETCH(slot(link(r, kRight)), 0);
      if (link(b, kRight) >= 0) HM_PREFETCH(slot(link(b, kRight)), 0);
      if (link(cur, kLeft) >= 0) HM_PREFETCH(&link(link(cur, kLeft), kNpl), 0);  // (read on the way back up)
#endif
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

  // The weakest of entries [first, last): the lowest key by selects, not
  // branches (which child wins is data, a misprediction per branch); the
  // full comparison only where the lowest key may be shared.
  HM_FN int64_t weakest_child(int64_t first, int64_t last) const {
    int64_t c = first;
    double kc = heap[2 * first];
    bool tie = false;
    for (int64_t k = first + 1; k < last; ++k) {
      const double kk = heap[2 * k];
      tie = tie || kk == kc;
      const bool lower = kk < kc;
      c = lower ? k : c;
      kc = lower ? kk : kc;
    }
    if (tie) {
      c = first;
      for (int64_t k = first + 1; k < last; ++k) {
        if (bh_weaker(k, c)) c = k;
      }
    }
    return c;
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
        for (int64_t q = 0; q < kArity; ++q) {  // the grandchildren: the next level's loads, early
          const int64_t gc = kArity * (first + q) + 1;
          if (gc < n) {  // (its up to 4 entries span up to 2 cache lines)
            HM_PREFETCH(heap + 2 * gc, 0);
            HM_PREFETCH(heap + 2 * min_of(gc + kArity - 1, n - 1), 0);
          }
        }
        const int64_t c = weakest_child(first, min_of(first + kArity, n));
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
  HM_FN void insert(int32_t j) {
    const int64_t hc = heap_class(slot(j)[kClass]);
    if (!quotas) {
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

  HM_FN void remove(int32_t j) {
    const int64_t hc = heap_class(slot(j)[kClass]);
    if (!quotas) {
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
  HM_FN void rekey(int32_t j) {
    if (!quotas) {
      const int64_t h = hpos(j);
      heap[2 * h] = slot(j)[kKey];
      bh_sift(h, count(0));
      root(0) = bh_slot(0);
      return;
    }
    // Still weaker than its children and not weaker than its parent: the
    // heap order holds where it is (null-path lengths do not depend on keys).
    const int32_t p = link(j, kParent), l = link(j, kLeft), r = link(j, kRight);
    if ((p < 0 || weaker(p, j)) && (l < 0 || weaker(j, l)) && (r < 0 || weaker(j, r))) return;
    remove(j);
    insert(j);
  }

  // The key of the weakest member of victim's heap, victim being its root
  // (without quotas it sits at the top of the 4-ary heap: hot in cache).
  HM_FN double root_key(int32_t victim) const { return quotas ? slot(victim)[kKey] : heap[0]; }
};

}  // namespace policy
}  // namespace hardmix
