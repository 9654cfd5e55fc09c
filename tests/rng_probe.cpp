// A probe of csrc/kernels/rng.h's scalar functions for tests/test_rng.py, which
// compiles it with the system g++ (-O2 -ffp-contract=off, as the extension is
// built) and compares its answers with hardmix/rng.py bit for bit.
//
// Reads lines "<fn> <bits>" from stdin, fn one of exp, log1p, log and bits the
// input double's 64-bit pattern in hex; writes one line per input, the result's
// bit pattern in hex.
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "rng.h"

int main() {
  char fn[16];
  uint64_t in = 0;
  while (std::scanf("%15s %" SCNx64, fn, &in) == 2) {
    double x = 0.0;
    std::memcpy(&x, &in, sizeof x);
    double y = 0.0;
    if (std::strcmp(fn, "exp") == 0) {
      y = hardmix::rng::exp_det(x);
    } else if (std::strcmp(fn, "log1p") == 0) {
      y = hardmix::rng::log1p_det(x);
    } else if (std::strcmp(fn, "log") == 0) {
      y = hardmix::rng::log_det(x);
    } else {
      std::fprintf(stderr, "unknown function %s\n", fn);
      return 2;
    }
    uint64_t out = 0;
    std::memcpy(&out, &y, sizeof out);
    std::printf("%016" PRIx64 "\n", out);
  }
  return 0;
}
