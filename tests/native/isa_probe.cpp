// Prints the instruction set csrc/kernels/cpu_isa.h chooses on this CPU
// (0 baseline, 1 AVX2, 2 AVX-512F), under HARDMIX_CPU_ISA if set. Includes
// the headers of the host kernels that come in several builds, so that
// compiling it checks them with the compiler at hand.
#include <cstdio>

#include "cpu_isa.h"
#include "margin.h"
#include "policy.h"
#include "tickets.h"

int main() {
  std::printf("%d\n", static_cast<int>(hardmix::cpu_isa()));
  return 0;
}
