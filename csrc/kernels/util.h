// Device-safe basics of the policy's structures: the host/device qualifier,
// min/max/swap, a finiteness test and a heap sort (no std:: algorithm).
#pragma once

#include <cstdint>

// Every function of the policy's headers runs on the host (the CPU ops) and,
// compiled by nvcc, on the device (one thread runs a step: the policy is
// sequential by nature; csrc/cuda/policy.cu). So the code uses no std::
// algorithm, container or math function: sorting and selection are the heap
// sort below, scratch memory comes from the caller, and logarithms and
// exponentials are rng.h's own (+ - * / only), which is what makes CPU, CUDA
// and the Python reference agree to the bit.
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

constexpr double kInf = __builtin_huge_val();

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
