// Counter-based random numbers: every draw is a pure function of
// (seed, step, stream, index). DESIGN.md §2 "Random numbers".
//
// One header for the CPU ops, the CUDA kernels and (mirrored line by line) the
// Python module hardmix/rng.py. No state, so a draw never depends on how many
// draws came before it, on thread scheduling, or on the device: the CPU, CUDA
// and Python produce bit-identical values, runs are reproducible, and resuming
// from a checkpoint needs nothing but the step counter.
//
//   key  = stream_key(seed, step, stream)       once per (seed, step, stream)
//   bits = draw_bits(key, index)                one 64-bit word per index
//   u    = to_uniform(bits)                     double in the open (0, 1)
//   g    = to_gumbel(u) = -log(-log(u))         Gumbel(0, 1)
//
// All arguments are unsigned 64-bit; Python's signed int64 values are read as
// their two's-complement bit patterns, and index arithmetic wraps mod 2^64.
//
// draw_bits is the SplitMix64 sequence of a generator seeded with `key`
// (output i = finalizer(key + (i + 1) * golden)); stream_key chains the same
// finalizer over seed, step and stream. The finalizer is Stafford's "Mix13",
// the one SplitMix64 uses.
//
// The logarithm is our own (log_det below), written with + - * / only, so that
// glibc, CUDA's libdevice and CPython agree to the bit. This needs IEEE double
// arithmetic without fused multiply-add contraction: the CMake targets build
// with -ffp-contract=off (host) and --fmad=false (nvcc).
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace hardmix {
namespace rng {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// Stafford's Mix13 finalizer: a bijection on 64-bit words with full avalanche.
HM_HD uint64_t mix13(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The per-(seed, step, stream) key. O(1).
HM_HD uint64_t stream_key(uint64_t seed, uint64_t step, uint64_t stream) {
  uint64_t k = mix13(seed + kGolden);
  k = mix13(k ^ mix13(step + 2 * kGolden));
  k = mix13(k ^ mix13(stream + 3 * kGolden));
  return k;
}

// The 64 random bits for one index under a key. O(1).
HM_HD uint64_t draw_bits(uint64_t key, uint64_t index) {
  return mix13(key + (index + 1) * kGolden);
}

// The top 52 bits as a double strictly inside (0, 1): (k + 1/2) / 2^52 with
// k in [0, 2^52). Every step is exact, so the value is the same everywhere.
// Smallest value 2^-53, largest 1 - 2^-53; never 0 or 1, so both logarithms of
// the Gumbel transform are finite.
HM_HD double to_uniform(uint64_t bits) {
  return (static_cast<double>(bits >> 12) + 0.5) * 0x1p-52;
}

// Natural logarithm of a positive normal double, to within 1 ulp, by the
// classic argument reduction x = 2^e * m, m in [sqrt(2)/2, sqrt(2)), and a
// degree-14 odd polynomial in s = (m - 1) / (m + 1) (the fdlibm coefficients).
// Domain: positive, normal, finite x (all that the Gumbel transform needs:
// arguments lie in [2^-53, 37]). Not for zero, subnormals, inf or NaN.
HM_HD double log_det(double x) {
  const double ln2_hi = 6.93147180369123816490e-01;
  const double ln2_lo = 1.90821492927058770002e-10;
  const double lg1 = 6.666666666666735130e-01;
  const double lg2 = 3.999999999940941908e-01;
  const double lg3 = 2.857142874366239149e-01;
  const double lg4 = 2.222219843214978396e-01;
  const double lg5 = 1.818357216161805012e-01;
  const double lg6 = 1.531383769920937332e-01;
  const double lg7 = 1.479819860511658591e-01;
  int e = 0;
  double m = frexp(x, &e);  // x = m * 2^e, m in [0.5, 1); exact
  if (m < 0.70710678118654752440) {
    m = m * 2.0;  // exact
    e = e - 1;
  }
  const double f = m - 1.0;  // exact (Sterbenz)
  const double s = f / (2.0 + f);
  const double dk = static_cast<double>(e);
  const double z = s * s;
  const double w = z * z;
  const double t1 = w * (lg2 + w * (lg4 + w * lg6));
  const double t2 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)));
  const double r = t2 + t1;
  const double hfsq = 0.5 * f * f;
  return dk * ln2_hi - ((hfsq - (s * (hfsq + r) + dk * ln2_lo)) - f);
}

// Gumbel(0, 1) from a uniform in (0, 1). Finite for every to_uniform value:
// range about [-3.6, 36.7].
HM_HD double to_gumbel(double u) { return -log_det(-log_det(u)); }

}  // namespace rng
}  // namespace hardmix
