// Exact conversion of 16-bit floating-point bit patterns to float, without
// torch, CUDA or compiler extensions, for host and device alike.
//
// float16 and bfloat16 values are all exactly representable as float, so the
// conversions are exact (NaN payloads aside: any NaN stays a NaN).
#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace hardmix {

HM_HD float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

// bfloat16 is the top half of a float32.
HM_HD float bf16_to_float(uint16_t h) {
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

HM_HD uint32_t float_to_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// IEEE binary16 -> binary32, exact and branch-free (selects only), so that a
// loop over it vectorises. The exponent/mantissa bits move into place and the
// exponent is rebiased (15 -> 127); infinities and NaNs get the rest of the
// float exponent; zeros and subnormals (exponent 0) are renormalised exactly
// by one float subtraction: 2^-14 * (1 + m/1024) - 2^-14 = m * 2^-24.
HM_HD float half_to_float(uint16_t h) {
  const uint32_t shifted = static_cast<uint32_t>(h & 0x7fffu) << 13;
  const uint32_t exp = shifted & 0x0f800000u;
  uint32_t out = shifted + (112u << 23);
  out += exp == 0x0f800000u ? (128u - 16u) << 23 : 0u;
  const float renorm =
      bits_to_float(out + (1u << 23)) - bits_to_float(113u << 23);
  out = exp == 0 ? float_to_bits(renorm) : out;
  return bits_to_float(out | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

// How one element of each supported logits dtype widens to float (used by the
// CPU margin kernel and the CUDA one alike).
struct LoadF32 {
  using storage = float;
  static HM_HD float load(float v) { return v; }
};
struct LoadF16 {
  using storage = uint16_t;
  static HM_HD float load(uint16_t v) { return half_to_float(v); }
};
struct LoadBF16 {
  using storage = uint16_t;
  static HM_HD float load(uint16_t v) { return bf16_to_float(v); }
};

}  // namespace hardmix
