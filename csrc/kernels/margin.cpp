// Per-instruction-set builds of the CPU margin kernel (margin.h). Torch-free.
//
// On x86-64 with GCC or Clang each entry point exists three times, compiled
// for AVX-512F (64-byte vectors), AVX2 (32) and the SSE2 baseline (16); the
// first call asks the CPU which it supports and keeps that choice. So one
// wheel runs everywhere and is fast where the CPU allows, without -march.
// Elsewhere (e.g. aarch64: NEON is baseline) there is one 16-byte build.

#include "margin.h"

#include "cpu_isa.h"

namespace hardmix {
namespace margin {
namespace {

#define HM_MARGIN_ENTRY(NAME, ATTR, BYTES, LOAD)                              \
  ATTR void NAME(const LOAD::storage* x, int64_t rs, int64_t C,               \
                 const int64_t* t, float* out, int64_t lo, int64_t hi) {      \
    rows_margin<BYTES, LOAD>(x, rs, C, t, out, lo, hi);                       \
  }

HM_MARGIN_ENTRY(f32_base, , 16, LoadF32)
HM_MARGIN_ENTRY(f16_base, , 16, LoadF16)
HM_MARGIN_ENTRY(bf16_base, , 16, LoadBF16)

#if defined(HM_X86_DISPATCH)
HM_MARGIN_ENTRY(f32_avx2, __attribute__((target("avx2"))), 32, LoadF32)
HM_MARGIN_ENTRY(f16_avx2, __attribute__((target("avx2,f16c"))), 32, LoadF16C)
HM_MARGIN_ENTRY(bf16_avx2, __attribute__((target("avx2"))), 32, LoadBF16)
HM_MARGIN_ENTRY(f32_avx512, __attribute__((target("avx512f"))), 64, LoadF32)
HM_MARGIN_ENTRY(f16_avx512, __attribute__((target("avx512f,f16c"))), 64, LoadF16C)
HM_MARGIN_ENTRY(bf16_avx512, __attribute__((target("avx512f"))), 64, LoadBF16)
#endif

#undef HM_MARGIN_ENTRY

}  // namespace

#if defined(HM_X86_DISPATCH)
#define HM_DISPATCH(NAME, ...)                                        \
  switch (cpu_isa()) {                                                \
    case Isa::kAvx512: return NAME##_avx512(__VA_ARGS__);             \
    case Isa::kAvx2: return NAME##_avx2(__VA_ARGS__);                 \
    default: return NAME##_base(__VA_ARGS__);                         \
  }
#else
#define HM_DISPATCH(NAME, ...) return NAME##_base(__VA_ARGS__);
#endif

void rows_margin_f32(const float* logits, int64_t row_stride, int64_t C,
                     const int64_t* targets, float* out, int64_t begin,
                     int64_t end) {
  HM_DISPATCH(f32, logits, row_stride, C, targets, out, begin, end)
}

void rows_margin_f16(const uint16_t* logits, int64_t row_stride, int64_t C,
                     const int64_t* targets, float* out, int64_t begin,
                     int64_t end) {
  HM_DISPATCH(f16, logits, row_stride, C, targets, out, begin, end)
}

void rows_margin_bf16(const uint16_t* logits, int64_t row_stride, int64_t C,
                      const int64_t* targets, float* out, int64_t begin,
                      int64_t end) {
  HM_DISPATCH(bf16, logits, row_stride, C, targets, out, begin, end)
}

}  // namespace margin
}  // namespace hardmix
