// A batch of admission tickets, update()'s Gumbel draws: g[b] =
// to_gumbel(to_uniform(draw_bits(key, indices[b]))), bit for bit what rng.h
// gives one at a time. O(n).
//
// On an x86-64 host (GCC or Clang) the batch runs in vectors of the widest
// instruction set the CPU has (cpu_isa.h: AVX-512F, AVX2, else SSE2): per
// lane the same integer, + - * / and bit operations in the same order, so
// the same bits (every argument of the two logarithms is a positive normal
// double, so rng::log_det's special cases never arise). Like rng.h, this
// needs -ffp-contract=off: target("avx512f") brings FMA instructions, which
// contraction would use. Elsewhere, and on the device, one ticket at a time.
#pragma once

#include <cstdint>

#include "cpu_isa.h"
#include "rng.h"

namespace hardmix {
namespace rng {

HM_FN inline void tickets_one_by_one(uint64_t key, const int64_t* indices, int64_t n, double* g) {
  for (int64_t b = 0; b < n; ++b) g[b] = to_gumbel(to_uniform(draw_bits(key, static_cast<uint64_t>(indices[b]))));
}

#if defined(HM_X86_DISPATCH)

// W lanes of doubles, unsigned and signed 64-bit integers (GCC vector extensions).
template <int W>
struct Lanes;
#define HM_LANES(W)                                          \
  template <>                                                \
  struct Lanes<W> {                                          \
    typedef double d __attribute__((vector_size(8 * W)));    \
    typedef uint64_t u __attribute__((vector_size(8 * W)));  \
    typedef int64_t i __attribute__((vector_size(8 * W)));   \
  };
HM_LANES(2)
HM_LANES(4)
HM_LANES(8)
#undef HM_LANES

// Force-inlined, so that each per-ISA entry point below compiles it for its
// own instruction set.
template <int W>
inline __attribute__((always_inline)) void tickets_lanes(uint64_t key, const int64_t* indices, int64_t n,
                                                         double* g) {
  typedef typename Lanes<W>::d vd;
  typedef typename Lanes<W>::u vu;
  typedef typename Lanes<W>::i vi;
  int64_t b = 0;
  for (; b + W <= n; b += W) {
    vu z;
    for (int l = 0; l < W; ++l) z[l] = static_cast<uint64_t>(indices[b + l]);
    z = key + (z + 1) * kGolden;  // draw_bits: mix13 of the SplitMix64 sequence
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    vd x = (__builtin_convertvector(z >> 12, vd) + 0.5) * 0x1p-52;  // to_uniform (the conversion is exact)
    for (int twice = 0; twice < 2; ++twice) {  // to_gumbel: x := -log_det(x), twice
      const vu bits = (vu)x;  // frexp_pos: x = m * 2^e, m in [0.5, 1)
      vi e = (vi)(bits >> 52) - 1022;
      vd m = (vd)((bits & 0x000FFFFFFFFFFFFFull) | (1022ull << 52));
      const vi low = m < 0.70710678118654752440;  // (-1 where true)
      m = low ? m * 2.0 : m;
      e = e + low;
      const vd f = m - 1.0;
      const vd dk = __builtin_convertvector(e, vd);
      vd y;
      log_reduced(f, dk, &y);
      x = -y;
    }
    for (int l = 0; l < W; ++l) g[b + l] = x[l];
  }
  tickets_one_by_one(key, indices + b, n - b, g + b);
}

__attribute__((target("avx512f"))) inline void tickets_avx512(uint64_t key, const int64_t* indices, int64_t n,
                                                              double* g) {
  tickets_lanes<8>(key, indices, n, g);
}
__attribute__((target("avx2"))) inline void tickets_avx2(uint64_t key, const int64_t* indices, int64_t n,
                                                         double* g) {
  tickets_lanes<4>(key, indices, n, g);
}
inline void tickets_sse2(uint64_t key, const int64_t* indices, int64_t n, double* g) {
  tickets_lanes<2>(key, indices, n, g);
}

#endif

// g[0, n) := the tickets of indices[0, n) under key.
HM_FN inline void tickets(uint64_t key, const int64_t* indices, int64_t n, double* g) {
#if defined(HM_X86_DISPATCH)
  switch (cpu_isa()) {
    case Isa::kAvx512: return tickets_avx512(key, indices, n, g);
    case Isa::kAvx2: return tickets_avx2(key, indices, n, g);
    default: return tickets_sse2(key, indices, n, g);
  }
#else
  tickets_one_by_one(key, indices, n, g);
#endif
}

}  // namespace rng
}  // namespace hardmix
