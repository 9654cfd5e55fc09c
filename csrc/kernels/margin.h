// Classification margin, torch-free (CPU side; the CUDA kernel in
// csrc/cuda/margin.cu applies the same definition).
//
//   margin[b] = x[b, t] - max_{j != t} x[b, j],   t = targets[b]
//
// computed in float32 after an exact widening of float16/bfloat16 inputs.
// Negative means misclassified. NaN anywhere in the row gives NaN; infinities
// follow IEEE arithmetic (+inf true logit against a finite rest gives +inf,
// +inf against +inf gives NaN). Caller guarantees C >= 2 and t in [0, C).
//
// Cost: one pass over each row, O(C), no heap allocation. The row is read in
// blocks folded into SIMD accumulators (GCC/Clang vector extensions, so the
// same source serves SSE2, AVX2, AVX-512 and NEON). float32 rows are read in
// place, as the two ranges either side of the target, each closed by one
// overlapping block (a max is idempotent). float16/bfloat16 rows are widened
// block by block into a stack buffer, where the target's lane is masked. A
// SIMD max does not propagate NaN, so the fast path also sums x - x, which
// stays 0 on finite rows; a row with an infinity or a NaN is recomputed one
// element at a time (row_margin_scalar).
//
// rows_margin_* (margin.cpp) are compiled once per instruction set (x86-64:
// AVX-512F, AVX2, SSE2; the first two with F16C for float16) and the best one
// the CPU supports is picked at run time.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "floats.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace hardmix {
namespace margin {

// Rows [begin, end) of a [B, C] matrix whose rows start `row_stride` elements
// apart (columns contiguous); writes out[begin, end). O((end - begin) * C).
void rows_margin_f32(const float* logits, int64_t row_stride, int64_t C,
                     const int64_t* targets, float* out, int64_t begin,
                     int64_t end);
void rows_margin_f16(const uint16_t* logits, int64_t row_stride, int64_t C,
                     const int64_t* targets, float* out, int64_t begin,
                     int64_t end);
void rows_margin_bf16(const uint16_t* logits, int64_t row_stride, int64_t C,
                      const int64_t* targets, float* out, int64_t begin,
                      int64_t end);

// ---- implementation, shared by the per-ISA clones in margin.cpp -----------
// Everything below is force-inlined so that each per-ISA entry point compiles
// it for its own instruction set (a call would land in the baseline build).
#if defined(__GNUC__)
#define HM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define HM_ALWAYS_INLINE inline
#endif


using hardmix::LoadBF16;
using hardmix::LoadF16;
using hardmix::LoadF32;

// Lane-wise running maxima over kAcc independent vectors of kBytes bytes
// (16: SSE2/NEON, 32: AVX2, 64: AVX-512), plus a lane-wise NaN flag. The
// vector width must match the instruction set the code is compiled for: GCC
// splits wider vectors but then scalarises their comparisons.
template <int kBytes>
struct Vec;  // (GCC ignores vector_size on a typedef with a dependent size)
template <>
struct Vec<16> {
  typedef float F __attribute__((vector_size(16)));
  typedef int32_t I __attribute__((vector_size(16)));
};
template <>
struct Vec<32> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
};
template <>
struct Vec<64> {
  typedef float F __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
};

template <int kBytes>
struct MaxAcc {
  using VecF = typename Vec<kBytes>::F;
  using VecI = typename Vec<kBytes>::I;
  static constexpr int kLanes = kBytes / 4;
  static constexpr int kAcc = 4;
  static constexpr int kBlock = kAcc * kLanes;  // floats folded per call

  VecF a[kAcc];
  VecF odd;  // sum of x - x: stays 0 unless an inf or NaN was folded
  float s_max;  // the same for elements folded one at a time
  float s_odd;
  bool vec_used;

  HM_ALWAYS_INLINE MaxAcc() {
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < kAcc; ++j) a[j] = VecF{} + ninf;
    odd = VecF{};
    s_max = ninf;
    s_odd = 0.0f;
    vec_used = false;
  }

  // Folds kBlock contiguous floats. (Plain arithmetic and selects only: GCC
  // lowers vector comparisons that produce masks before inlining into the
  // per-ISA entry points, and would scalarise them.)
  HM_ALWAYS_INLINE void fold(const float* p) {
    for (int j = 0; j < kAcc; ++j) {
      VecF x;
      memcpy(&x, p + j * kLanes, sizeof(x));
      a[j] = x > a[j] ? x : a[j];
      odd += x - x;
    }
    vec_used = true;
  }

  // Folds kLanes contiguous floats.
  HM_ALWAYS_INLINE void fold_one(const float* p) {
    VecF x;
    memcpy(&x, p, sizeof(x));
    a[0] = x > a[0] ? x : a[0];
    odd += x - x;
    vec_used = true;
  }

  HM_ALWAYS_INLINE void fold_scalar(float v) {
    s_max = v > s_max ? v : s_max;
    s_odd += v - v;
  }

  // Folds p[0, n): whole blocks, then one more block (or vector) that ends
  // exactly at n and overlaps what came before. A maximum is idempotent, so
  // folding an element twice is harmless, and no element needs a copy.
  HM_ALWAYS_INLINE void fold_range(const float* p, int64_t n) {
    if (n >= kBlock) {
      int64_t i = 0;
      for (; i + kBlock <= n; i += kBlock) fold(p + i);
      if (i < n) fold(p + n - kBlock);
    } else if (n >= kLanes) {
      int64_t i = 0;
      for (; i + kLanes <= n; i += kLanes) fold_one(p + i);
      if (i < n) fold_one(p + n - kLanes);
    } else {
      for (int64_t i = 0; i < n; ++i) fold_scalar(p[i]);
    }
  }

  // Whether everything folded was finite.
  HM_ALWAYS_INLINE bool all_finite() const {
    float s = s_odd;
    if (vec_used) {
      for (int k = 0; k < kLanes; ++k) s += odd[k];
    }
    return s == 0.0f;
  }

  // The maximum over everything folded (meaningful when all_finite()).
  HM_ALWAYS_INLINE float max() const {
    float mx = s_max;
    if (vec_used) {
      VecF m = a[0];
      for (int j = 1; j < kAcc; ++j) m = a[j] > m ? a[j] : m;
      for (int k = 0; k < kLanes; ++k) mx = m[k] > mx ? m[k] : mx;
    }
    return mx;
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
// float16 widened 8 at a time by the F16C instruction (exact, as
// half_to_float, which a compiler does not vectorise): for the AVX2 and
// AVX-512 builds, whose CPUs have F16C (margin.cpp checks).
struct LoadF16C : LoadF16 {
  __attribute__((target("avx2,f16c"))) static void load_block(const uint16_t* p, int64_t n, float* buf) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
      _mm256_storeu_ps(buf + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + k))));
    }
    for (; k < n; ++k) buf[k] = half_to_float(p[k]);
  }
};
#endif

// Whether L widens a whole block at once (L::load_block) or one element at a time.
template <class L, class = void>
struct HasBlockLoad : std::false_type {};
template <class L>
struct HasBlockLoad<L, std::void_t<decltype(&L::load_block)>> : std::true_type {};

// Widens n <= block elements into buf, pads it to `block` with the lowest
// finite float, and masks element `skip` (an index into the block, or -1) the
// same way. Padding with a finite value keeps the all-finite test meaningful;
// it cannot change the maximum of a row whose other entries are all finite.
template <class L>
HM_ALWAYS_INLINE void stage(const typename L::storage* p, int64_t n,
                            int64_t block, int64_t skip, float* buf) {
  const float lowest = std::numeric_limits<float>::lowest();
  if constexpr (HasBlockLoad<L>::value) {
    L::load_block(p, n, buf);
  } else {
    for (int64_t k = 0; k < n; ++k) buf[k] = L::load(p[k]);
  }
  for (int64_t k = n; k < block; ++k) buf[k] = lowest;
  if (skip >= 0) buf[skip] = lowest;
}

// The exact definition, one element at a time: for rows holding an infinity
// or a NaN (rare, so speed does not matter).
template <class L>
HM_ALWAYS_INLINE float row_margin_scalar(const typename L::storage* row,
                                         int64_t C, int64_t t) {
  float mx = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int64_t j = 0; j < C; ++j) {
    if (j == t) continue;
    const float v = L::load(row[j]);
    nan = nan || v != v;
    mx = v > mx ? v : mx;
  }
  if (nan) return std::numeric_limits<float>::quiet_NaN();
  return L::load(row[t]) - mx;
}

// Margin of one row of C logits whose true class is t. O(C).
template <int kBytes, class L>
HM_ALWAYS_INLINE float row_margin(const typename L::storage* row, int64_t C,
                                  int64_t t) {
  using Acc = MaxAcc<kBytes>;
  constexpr int64_t kBlock = Acc::kBlock;
  Acc acc;
  if constexpr (std::is_same_v<typename L::storage, float>) {
    // In place: the two ranges on either side of the target.
    acc.fold_range(row, t);
    acc.fold_range(row + t + 1, C - t - 1);
  } else {
    // Widened block by block into a buffer; the target's lane is masked.
    // A short last block is padded only to a whole vector.
    constexpr int64_t kLanes = Acc::kLanes;
    alignas(64) float buf[kBlock];
    for (int64_t c = 0; c < C; c += kBlock) {
      const int64_t n = C - c < kBlock ? C - c : kBlock;
      const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
      stage<L>(row + c, n, padded, t >= c && t < c + n ? t - c : -1, buf);
      if (padded == kBlock) {
        acc.fold(buf);
      } else {
        for (int64_t v = 0; v < padded; v += kLanes) acc.fold_one(buf + v);
      }
    }
  }
  if (!acc.all_finite()) return row_margin_scalar<L>(row, C, t);
  return L::load(row[t]) - acc.max();
}

template <int kBytes, class L>
HM_ALWAYS_INLINE void rows_margin(const typename L::storage* logits,
                                  int64_t row_stride, int64_t C,
                                  const int64_t* targets, float* out,
                                  int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
    out[b] = row_margin<kBytes, L>(logits + b * row_stride, C, targets[b]);
  }
}

}  // namespace margin
}  // namespace hardmix
