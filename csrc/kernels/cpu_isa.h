// The instruction set of the host kernels that come in several builds
// (margin.cpp, tickets.h), chosen once at run time: the best the CPU has
// (x86-64 with GCC or Clang: AVX-512F, AVX2 with F16C, else the SSE2
// baseline), capped by the environment variable HARDMIX_CPU_ISA = baseline |
// avx2 | avx512 when it is set (for tests and debugging; a level the CPU
// lacks is never chosen). Host only.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#define HM_X86_DISPATCH 1
#include <cpuid.h>
#endif

namespace hardmix {

enum class Isa { kBase, kAvx2, kAvx512 };

inline Isa detect_isa() {
  Isa best = Isa::kBase;
#if defined(HM_X86_DISPATCH)
  __builtin_cpu_init();
  // (the float16 margin builds also use F16C, which every AVX2 and AVX-512
  // CPU has; checked all the same, by CPUID: not every compiler's
  // __builtin_cpu_supports knows "f16c")
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  if (__builtin_cpu_supports("avx2") && f16c) best = Isa::kAvx2;
  if (__builtin_cpu_supports("avx512f") && f16c) best = Isa::kAvx512;
#endif
  const char* cap = std::getenv("HARDMIX_CPU_ISA");
  if (cap != nullptr) {
    const Isa want = std::strcmp(cap, "baseline") == 0 ? Isa::kBase
                     : std::strcmp(cap, "avx2") == 0   ? Isa::kAvx2
                                                       : Isa::kAvx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

inline Isa cpu_isa() {
  static const Isa chosen = detect_isa();  // thread-safe, once
  return chosen;
}

}  // namespace hardmix
