// Counter-based random numbers: every draw is a pure function of
// (seed, step, stream, index).
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
// glibc, CUDA's libdevice and CPython agree to the bit. So are exp_det and
// log1p_det, for the policy's softplus. This needs IEEE double arithmetic
// without fused multiply-add contraction: the CMake targets build with
// -ffp-contract=off (host) and --fmad=false (nvcc). Beyond + - * / and
// comparisons they use only frexp (frexp_pos below), ldexp of 1.0 (an exact
// power of two) and int <-> double conversions, all exact, so every step
// rounds the same way everywhere. Each function is mirrored, operation for operation, in
// hardmix/rng.py (log, exp, log1p); tests/rng_probe.cpp checks the bits. tickets.h
// repeats draw_bits, to_uniform and log_det's reduction in vector lanes for a batch
// of tickets (sharing log_det's polynomial, log_reduced).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

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

// log's and log1p's constants (fdlibm): ln 2 in a high part whose products
// with small integers are exact and the rest; the polynomial's coefficients.
constexpr double ln2_hi = 6.93147180369123816490e-01;
constexpr double ln2_lo = 1.90821492927058770002e-10;
constexpr double lg1 = 6.666666666666735130e-01;
constexpr double lg2 = 3.999999999940941908e-01;
constexpr double lg3 = 2.857142874366239149e-01;
constexpr double lg4 = 2.222219843214978396e-01;
constexpr double lg5 = 1.818357216161805012e-01;
constexpr double lg6 = 1.531383769920937332e-01;
constexpr double lg7 = 1.479819860511658591e-01;

// frexp(x) for positive finite x (normal or subnormal), read from the bits:
// x = m * 2^e, m in [0.5, 1), exact. Inline, where libm's frexp is a call
// (the policy takes three logarithms per example and step).
HM_HD double frexp_pos(double x, int* e) {
  int shift = 0;
  if (x < 0x1p-1022) {  // subnormal: scale up exactly first
    x = x * 0x1p54;
    shift = 54;
  }
  uint64_t b;
#if defined(__CUDA_ARCH__)
  b = static_cast<uint64_t>(__double_as_longlong(x));
#else
  std::memcpy(&b, &x, sizeof b);
#endif
  *e = static_cast<int>(b >> 52) - 1022 - shift;
  b = (b & 0x000FFFFFFFFFFFFFull) | (static_cast<uint64_t>(1022) << 52);
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double m;
  std::memcpy(&m, &b, sizeof m);
  return m;
#endif
}

// log_det's polynomial: *out = log((1 + f) * 2^dk), f = m - 1 for m in
// [sqrt(2)/2, sqrt(2)). T: a double, or a vector of them (tickets.h; taken
// and given through references, so no vector crosses a call by value).
template <class T>
HM_HD void log_reduced(const T& f, const T& dk, T* out) {
  const T s = f / (2.0 + f);
  const T z = s * s;
  const T w = z * z;
  const T t1 = w * (lg2 + w * (lg4 + w * lg6));
  const T t2 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)));
  const T r = t2 + t1;
  const T hfsq = 0.5 * f * f;
  *out = dk * ln2_hi - ((hfsq - (s * (hfsq + r) + dk * ln2_lo)) - f);
}

// Natural logarithm to within 1 ulp, by the classic argument reduction
// x = 2^e * m, m in [sqrt(2)/2, sqrt(2)), and a degree-14 odd polynomial in
// s = (m - 1) / (m + 1) (the fdlibm coefficients). frexp normalises subnormal
// x exactly, and e * ln2_hi is exact for every |e| <= 1074, so subnormals go
// through the same formula. Domain: every double. Positive finite x (normal or
// subnormal) gets the formula; log(+inf) = +inf, log(+-0) = -inf,
// log(x < 0) = NaN, log(NaN) = NaN. (The Gumbel transform's arguments lie in
// [2^-53, 37]; the policy's in [0, +inf].)
HM_HD double log_det(double x) {
  if (!(x > 0.0 && x < HUGE_VAL)) {  // zero, negative, +inf or NaN
    if (x != x) return x + x;
    if (x == 0.0) return -HUGE_VAL;
    if (x > 0.0) return x;  // +inf
    return NAN;
  }
  int e = 0;
  double m = frexp_pos(x, &e);  // x = m * 2^e, m in [0.5, 1); exact
  if (m < 0.70710678118654752440) {
    m = m * 2.0;  // exact
    e = e - 1;
  }
  const double f = m - 1.0;  // exact (Sterbenz)
  const double dk = static_cast<double>(e);
  double out;
  log_reduced(f, dk, &out);
  return out;
}

// e^x to within 1 ulp: fdlibm's e_exp.c with its bit tests written as
// comparisons. Reduce x = k ln2 + r, |r| <= ln2 / 2 (ln2 split in a hi part
// whose products with k are exact and a lo part), approximate e^r by a
// rational function of r with the degree-5 Remez polynomial P1..P5, and scale
// by 2^k. The scaling multiplies by exact powers of two, so it rounds at most
// once: exactly when the result is normal, and once (like ldexp) when it is
// subnormal, where the first product is still exact and normal.
// Domain: every double. exp(NaN) = NaN, exp(+inf) = +inf, exp(-inf) = 0,
// x > 709.78... overflows to +inf, x < -745.13... underflows to 0.
HM_HD double exp_det(double x) {
  const double o_threshold = 7.09782712893383973096e+02;  // 0x1.62e42fefa39efp+9
  const double u_threshold = -7.45133219101941108420e+02;  // -0x1.74910d52d3051p+9
  const double ln2_hi = 6.93147180369123816490e-01;
  const double ln2_lo = 1.90821492927058770002e-10;
  const double invln2 = 1.44269504088896338700e+00;
  const double p1 = 1.66666666666666019037e-01;
  const double p2 = -2.77777777770155933842e-03;
  const double p3 = 6.61375632143793436117e-05;
  const double p4 = -1.65339022054652515390e-06;
  const double p5 = 4.13813679705723846039e-08;
  if (x != x) return x + x;              // NaN
  if (x > o_threshold) return HUGE_VAL;  // overflow, +inf
  if (x < u_threshold) return 0.0;       // underflow, -inf
  const double ax = x < 0.0 ? -x : x;
  double hi = 0.0;
  double lo = 0.0;
  double r = x;
  int k = 0;
  if (ax >= 0x1.62e43p-2) {   // |x| > ln2 / 2 (fdlibm: hx > 0x3fd62e42)
    if (ax < 0x1.0a2b2p+0) {  // and |x| < 1.5 ln2 (hx < 0x3ff0a2b2): k = +-1
      if (x > 0.0) {
        hi = x - ln2_hi;
        lo = ln2_lo;
        k = 1;
      } else {
        hi = x + ln2_hi;
        lo = -ln2_lo;
        k = -1;
      }
    } else {
      k = static_cast<int>(invln2 * x + (x > 0.0 ? 0.5 : -0.5));  // truncates
      const double t = static_cast<double>(k);
      hi = x - t * ln2_hi;  // t * ln2_hi is exact
      lo = t * ln2_lo;
    }
    r = hi - lo;
  } else if (ax < 0x1p-28) {
    return 1.0 + x;
  }
  const double t = r * r;
  const double c = r - t * (p1 + t * (p2 + t * (p3 + t * (p4 + t * p5))));
  if (k == 0) return 1.0 - ((r * c) / (c - 2.0) - r);
  const double y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi);  // in [0.7, 1.5]
  if (k >= -1021) {
    if (k == 1024) return (y * 2.0) * 0x1p1023;  // 2^1024 is not a double
    return y * ldexp(1.0, k);                    // exact
  }
  return (y * ldexp(1.0, k + 1000)) * 0x1p-1000;  // exact, then one rounding
}

// log(1 + x) to within 1 ulp: fdlibm's s_log1p.c with its bit tests written
// as comparisons and frexp for the exponent. Tiny |x| returns x (or
// x - x^2/2); for -0.29 < x < 0.41 the log polynomial runs on f = x itself;
// otherwise u = 1 + x is split as 2^k * m like log_det, carrying the rounding
// error of 1 + x as a correction c / u. (fdlibm's shortcut for |f| < 2^-20 is
// left out: the polynomial is as accurate there.)
// Domain: every double. Finite x > -1 gets the formula; log1p(-1) = -inf,
// log1p(x < -1) = NaN, log1p(+inf) = +inf, log1p(NaN) = NaN, and
// log1p(-0) = -0. (The policy's softplus needs x in (0, 1].)
HM_HD double log1p_det(double x) {
  if (x != x) return x + x;  // NaN
  if (x <= -1.0) return x == -1.0 ? -HUGE_VAL : NAN;
  if (x == HUGE_VAL) return x;
  const double ax = x < 0.0 ? -x : x;
  if (ax < 0x1p-29) {
    if (ax < 0x1p-54) return x;  // x^2/2 is below half an ulp of x
    return x - x * x * 0.5;
  }
  double f = x;
  double c = 0.0;
  double dk = 0.0;
  const bool k0 = x > -0x1.2bec4p-2 && x < 0x1.a827ap-2;  // 1 + x in (sqrt(2)/2, sqrt(2))
  if (!k0) {
    double u = x;
    if (x < 0x1p53) {
      u = 1.0 + x;
      c = u >= 2.0 ? 1.0 - (u - x) : x - (u - 1.0);  // 1 + x - u, exact
      c = c / u;
    }
    int e = 0;
    double m = frexp_pos(u, &e);  // u = m * 2^e, m in [0.5, 1); exact
    if (m < 0x1.6a09ep-1) {
      m = m * 2.0;  // exact
      e = e - 1;
    }
    f = m - 1.0;  // exact
    dk = static_cast<double>(e);
  }
  const double hfsq = 0.5 * f * f;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double r = z * (lg1 + z * (lg2 + z * (lg3 + z * (lg4 + z * (lg5 + z * (lg6 + z * lg7))))));
  if (k0) return f - (hfsq - s * (hfsq + r));
  return dk * ln2_hi - ((hfsq - (s * (hfsq + r) + (c + dk * ln2_lo))) - f);
}

// Gumbel(0, 1) from a uniform in (0, 1). Finite for every to_uniform value:
// range about [-3.6, 36.7].
HM_HD double to_gumbel(double u) { return -log_det(-log_det(u)); }

}  // namespace rng
}  // namespace hardmix
