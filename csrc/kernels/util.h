// Device-safe basics of the policy's structures: min/max/swap, a finiteness
// test, powers of two and a heap sort (no std:: algorithm).
#pragma once

#include <cstdint>

#include "common.h"

namespace hardmix {
namespace policy {

constexpr double kInf = __builtin_huge_val();

// The least power of two >= n and >= least.
HM_FN inline int64_t pow2_at_least(int64_t n, int64_t least = 1) {
  int64_t p = least;
  while (p < n) p *= 2;
  return p;
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

}  // namespace policy
}  // namespace hardmix
