// The sum tree of the members' replay weights: the policy's `tree` state
// tensor, tree[P + j] the leaf of slot j and tree[k] = tree[2k] + tree[2k + 1]
// (P = 2^ceil(log2 R); empty slots weigh 0). Each pick of the replay draw is
// a descent, O(log R). (Binary rather than wider: a wider node saves cache
// lines per update, but makes each level of the descent a serial chain of
// dependent subtractions.)
#pragma once

#include <cstdint>

#include "util.h"

namespace hardmix {
namespace policy {

struct SumTree {
  double* tree;  // [2P]
  int64_t P;

  HM_FN double total() const { return tree[1]; }
  HM_FN double leaf(int32_t j) const { return tree[P + j]; }

  // Leaf j := w, and every sum above it.
  HM_FN void set(int32_t j, double w) {
    int64_t k = P + j;
    tree[k] = w;
    for (k /= 2; k >= 1; k /= 2) tree[k] = tree[2 * k] + tree[2 * k + 1];
  }

  // The sums above leaves already written, given as nodes P + j in list[0, n)
  // (overwritten): each sum on their paths recomputed once, level by level.
  // Every sum is its children's final values added, so the tree is bit for
  // bit what a set() per leaf makes, for about half the additions and no
  // chain of dependent stores. Sums are >= 0, so -1 marks a node already
  // listed for its level.
  HM_FN void fix(int64_t* list, int64_t n) {
    while (n > 0 && list[0] > 1) {
      int64_t up = 0;
      for (int64_t k = 0; k < n; ++k) {  // (no branch on a load: up <= k, so list[up] is read already)
        const int64_t parent = list[k] / 2;
        const int64_t first = tree[parent] != -1.0;
        tree[parent] = -1.0;
        list[up] = parent;
        up += first;
      }
      for (int64_t k = 0; k < up; ++k) tree[list[k]] = tree[2 * list[k]] + tree[2 * list[k] + 1];
      n = up;
    }
  }

  // Every sum from the leaves: O(P).
  HM_FN void sum_all() {
    for (int64_t k = P - 1; k >= 1; --k) tree[k] = tree[2 * k] + tree[2 * k + 1];
  }

  // For x = x_of(0) .. x_of(n-1) (0 <= x <= total, total > 0), into out: the
  // leaf where the running sum passes x. A descent goes left when the left
  // sum is positive and x is below it (or the right sum is 0), else subtracts
  // the left sum and goes right; never to a leaf of weight 0. kGroup descents
  // are interleaved level by level (independent loads: their misses overlap).
  template <class X>
  HM_FN void find_many(int64_t n, X x_of, int32_t* out) const {
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
        for (int q = 0; q < gn; ++q) {
          // The line of the nodes three levels down (8k .. 8k + 7, in the
          // tree while level >= 8) is fetched now, so that each descent has
          // misses of three levels in flight rather than one.
          if (level >= 8) HM_PREFETCH(tree + 8 * k[q], 0);
          // Branch-free (the direction is data: a branch on it would be
          // mispredicted half the time, and lose the overlap of the loads).
          // Going left subtracts 0.0 (left * 0: sums are finite, the weights
          // capped), which leaves x as it is.
          const double left = tree[2 * k[q]], right = tree[2 * k[q] + 1];
          const int go_right =
              static_cast<int>(!(left > 0)) | (static_cast<int>(x[q] >= left) & static_cast<int>(right > 0));
          x[q] -= left * static_cast<double>(go_right);
          k[q] = 2 * k[q] + go_right;
        }
      }
      for (int q = 0; q < gn; ++q) out[g + q] = static_cast<int32_t>(k[q] - P);
    }
  }
};

}  // namespace policy
}  // namespace hardmix
