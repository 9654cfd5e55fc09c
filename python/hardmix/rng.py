"""Counter-based random numbers in pure Python: the mirror of csrc/kernels/rng.h.

Every draw is a pure function of ``(seed, step, stream, index)``; this module
gives the same 64-bit words, uniforms and Gumbel draws as the native ops
``torch.ops.hardmix.uniform_fill`` / ``gumbel_fill``, bit for bit. It is the
source of randomness of the pure-Python reference policy, so that reference
and native engine can be compared exactly.

Integers are read modulo 2**64, as the native side reads its int64 arguments
(so ``-1`` and ``2**64 - 1`` are the same seed). Standard library only.

Example::

    >>> from hardmix import rng
    >>> key = rng.stream_key(seed=0, step=0, stream=0)
    >>> 0.0 < rng.uniform(key, 0) < 1.0
    True
"""

from __future__ import annotations

import math

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_SQRT_HALF = 0.70710678118654752440
_TWO_M52 = 2.0**-52


def mix13(z: int) -> int:
    """Stafford's Mix13 finalizer on a 64-bit word (a bijection)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, step: int, stream: int) -> int:
    """The key shared by all draws of one (seed, step, stream)."""
    k = mix13(seed + GOLDEN)
    k = mix13(k ^ mix13(step + 2 * GOLDEN))
    k = mix13(k ^ mix13(stream + 3 * GOLDEN))
    return k


def draw_bits(key: int, index: int) -> int:
    """The 64 random bits of ``index`` under ``key`` (SplitMix64 output ``index``)."""
    return mix13(key + ((index + 1) & MASK64) * GOLDEN)


def to_uniform(bits: int) -> float:
    """The top 52 bits as ``(k + 0.5) / 2**52``: strictly inside (0, 1), exact."""
    return (float(bits >> 12) + 0.5) * _TWO_M52


def log(x: float) -> float:
    """Natural log of a positive normal float, bit-identical to rng.h's ``log_det``.

    Within 1 ulp of :func:`math.log`; written with + - * / only, in the same
    order as the C++ code, so every platform gives the same bits.
    """
    m, e = math.frexp(x)
    if m < _SQRT_HALF:
        m = m * 2.0
        e = e - 1
    f = m - 1.0
    s = f / (2.0 + f)
    dk = float(e)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    hfsq = 0.5 * f * f
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)


def to_gumbel(u: float) -> float:
    """Gumbel(0, 1) from a uniform in (0, 1): ``-log(-log(u))``, always finite."""
    return -log(-log(u))


def uniform(key: int, index: int) -> float:
    """Uniform draw in (0, 1) for ``index`` under ``key``."""
    return to_uniform(draw_bits(key, index))


def gumbel(key: int, index: int) -> float:
    """Gumbel(0, 1) draw for ``index`` under ``key``."""
    return to_gumbel(uniform(key, index))


def uniforms(seed: int, step: int, stream: int, offset: int, n: int) -> list[float]:
    """What ``uniform_fill`` writes into ``n`` elements: indices offset .. offset+n-1."""
    key = stream_key(seed, step, stream)
    return [uniform(key, (offset + i) & MASK64) for i in range(n)]


def gumbels(seed: int, step: int, stream: int, offset: int, n: int) -> list[float]:
    """What ``gumbel_fill`` writes into ``n`` elements."""
    key = stream_key(seed, step, stream)
    return [gumbel(key, (offset + i) & MASK64) for i in range(n)]
