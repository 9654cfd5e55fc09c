// Importance weights of a batch drawn by hardmix.ReplaySampler (the formula
// is in the docstring of ReplaySampler.weights). Host code, no torch.

#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace hardmix {
namespace weights {

// tau: the expected time of the (m+1)-th arrival of the draw's exponential
// clocks given its order: the sum over r = 0..m of 1 / (the weight left
// after the first r picks), starting from `eligible`. 0 without replay
// (m_all = 0); inf when fewer than m_all were drawn (every eligible member
// was) or the weight left falls to 1e-12 of the start.
inline double tau(const double* drawn, int64_t n_drawn, int64_t m_all, double eligible) {
  if (m_all == 0) return 0.0;
  if (n_drawn < m_all) return HUGE_VAL;
  double remaining = eligible, t = 0.0;
  const double floor = remaining * 1e-12;
  for (int64_t r = 0; r <= n_drawn; ++r) {
    if (remaining <= floor) return HUGE_VAL;
    t += 1.0 / remaining;
    if (r < n_drawn) remaining -= drawn[r];
  }
  return t;
}

// out[b] = scale / (fresh_b + (n - fresh_b) * rho_b) for b < keep, 0 after
// (fill-ins count for nothing), with rho_b = 1 - exp(-w[b] * tau) (w[b] > 0
// when tau is inf), fresh_b = f_all * in_fresh[b] (in_fresh null: f_all).
// A NaN or +inf value becomes 0 and -inf the lowest double before the
// narrowing to float (as torch.nan_to_num then .float() do), so a value
// beyond float's range narrows to +-inf.
inline void batch(const double* w, int64_t B, double t, const uint8_t* in_fresh, double n, double f_all,
                  double scale, int64_t keep, float* out) {
  for (int64_t b = 0; b < B; ++b) {
    if (b >= keep) {
      out[b] = 0.0f;
      continue;
    }
    const double rho = std::isinf(t) ? (w[b] > 0 ? 1.0 : 0.0) : -std::expm1(w[b] * -t);
    const double fresh = in_fresh == nullptr ? f_all : (in_fresh[b] ? f_all : 0.0);
    double v = scale / (rho * (n - fresh) + fresh);
    if (std::isnan(v) || v == HUGE_VAL) v = 0.0;
    if (v == -HUGE_VAL) v = std::numeric_limits<double>::lowest();
    out[b] = static_cast<float>(v);
  }
}

}  // namespace weights
}  // namespace hardmix
