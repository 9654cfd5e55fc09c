// The stable sorting permutation of keys in [0, 1) (the uniforms that shuffle
// an epoch's pass, hardmix.plan): out[j] = the position of the j-th smallest
// key, equal keys in position order, as torch.sort(keys, stable=True)
// gives it. Bucketed by value, twice: into about n / 1024 coarse buckets
// (floor(key * C)), so that each later pass works within a cache-sized
// stretch, then each coarse bucket into about half as many fine buckets as it
// has keys (floor(key * C * L), less the bucket's first), each sorted stably
// by key. A bucket index never decreases as the key grows, so equal keys
// share every bucket, and each pass keeps position order. Expected O(n) for
// keys spread over [0, 1); O(n log n) at worst. Host code, no torch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace hardmix {
namespace order {

struct Keyed {
  double key;
  int64_t pos;
};

// Fine buckets of more entries than this are sorted by std::stable_sort,
// smaller ones by insertion (keys spread over [0, 1) give about 2 a bucket).
constexpr int64_t kInsertionMax = 32;
constexpr int64_t kCoarseKeys = 1024;  // keys per coarse bucket, about

// floor(key * scale) within [0, buckets) (key * scale may round up to `buckets`).
inline int64_t bucket_of(double key, double scale, int64_t buckets) {
  const int64_t b = static_cast<int64_t>(key * scale);
  return b < buckets ? b : buckets - 1;
}

// Sorts in[0, n) (in position order, all in coarse bucket c of C) stably by
// key into out positions; work: scratch.
inline void fine_sort(const Keyed* in, int64_t n, int64_t c, int64_t C, int64_t* out,
                      std::vector<int64_t>& start, std::vector<Keyed>& work) {
  if (n == 1) {
    out[0] = in[0].pos;
    return;
  }
  const int64_t L = n / 2 + 1;
  const double scale = static_cast<double>(C) * static_cast<double>(L);
  const int64_t first = c * L;
  auto local = [&](double key) {
    const int64_t b = static_cast<int64_t>(key * scale) - first;
    return b < 0 ? 0 : (b < L ? b : L - 1);
  };
  start.assign(static_cast<size_t>(L) + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[local(in[i].key) + 1];
  for (int64_t b = 0; b < L; ++b) start[b + 1] += start[b];
  work.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) work[start[local(in[i].key)]++] = in[i];  // (start[b] ends as b + 1's)
  for (int64_t b = 0, lo = 0; b < L; ++b) {
    const int64_t hi = start[b];
    Keyed* p0 = work.data() + lo;
    Keyed* p1 = work.data() + hi;
    if (hi - lo > kInsertionMax) {
      std::stable_sort(p0, p1, [](const Keyed& x, const Keyed& y) { return x.key < y.key; });
    } else {
      for (Keyed* p = p0 + 1; p < p1; ++p) {  // (only strictly greater keys move right: stable)
        const Keyed v = *p;
        Keyed* q = p;
        for (; q > p0 && (q - 1)->key > v.key; --q) *q = *(q - 1);
        *q = v;
      }
    }
    lo = hi;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = work[i].pos;
}

// keys: n values in [0, 1) (the caller checks); out: n positions.
inline void stable_order(const double* keys, int64_t n, int64_t* out) {
  if (n <= 0) return;
  const int64_t C = std::max<int64_t>(1, n / kCoarseKeys);
  const double scale = static_cast<double>(C);
  std::vector<int64_t> start(static_cast<size_t>(C) + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[bucket_of(keys[i], scale, C) + 1];
  for (int64_t c = 0; c < C; ++c) start[c + 1] += start[c];
  std::vector<Keyed> coarse(static_cast<size_t>(n));
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) coarse[next[bucket_of(keys[i], scale, C)]++] = Keyed{keys[i], i};
  }
  std::vector<int64_t> fine_start;
  std::vector<Keyed> work;
  for (int64_t c = 0; c < C; ++c) {
    if (start[c + 1] > start[c]) {
      fine_sort(coarse.data() + start[c], start[c + 1] - start[c], c, C, out + start[c], fine_start, work);
    }
  }
}

}  // namespace order
}  // namespace hardmix
