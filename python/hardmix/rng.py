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
_EXP_O_THRESHOLD = 7.09782712893383973096e02  # 0x1.62e42fefa39efp+9
_EXP_U_THRESHOLD = -7.45133219101941108420e02  # -0x1.74910d52d3051p+9
_INV_LN2 = 1.44269504088896338700e00
_P1 = 1.66666666666666019037e-01
_P2 = -2.77777777770155933842e-03
_P3 = 6.61375632143793436117e-05
_P4 = -1.65339022054652515390e-06
_P5 = 4.13813679705723846039e-08
_HALF_LN2_UP = float.fromhex("0x1.62e43p-2")  # fdlibm e_exp.c: hx > 0x3fd62e42
_THREE_HALF_LN2 = float.fromhex("0x1.0a2b2p+0")  # hx < 0x3ff0a2b2
_LOG1P_LO = float.fromhex("-0x1.2bec4p-2")  # fdlibm s_log1p.c: -0.2929 < x < 0.41422
_LOG1P_HI = float.fromhex("0x1.a827ap-2")
_LOG1P_SQRT_HALF = float.fromhex("0x1.6a09ep-1")
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
    """Natural log, bit-identical to rng.h's ``log_det``; defined for every float.

    Within 1 ulp of :func:`math.log` on positive finite floats, subnormals
    included; ``log(inf) = inf``, ``log(0) = -inf``, ``log(x < 0) = nan``,
    ``log(nan) = nan`` (where :func:`math.log` raises). Written with + - * /
    only, in the same order as the C++ code, so every platform gives the same bits.
    """
    if not (x > 0.0 and x < math.inf):  # zero, negative, inf or nan
        if x != x:
            return x + x
        if x == 0.0:
            return -math.inf
        if x > 0.0:
            return x
        return math.nan
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


def exp(x: float) -> float:
    """e**x, bit-identical to rng.h's ``exp_det``; defined for every float.

    Within 1 ulp of :func:`math.exp` (fdlibm's algorithm), subnormal results
    included; ``exp(nan) = nan``, ``exp(inf) = inf``, ``exp(-inf) = 0``,
    overflow gives ``inf`` (where :func:`math.exp` raises) and underflow 0.
    """
    if x != x:
        return x + x
    if x > _EXP_O_THRESHOLD:
        return math.inf
    if x < _EXP_U_THRESHOLD:
        return 0.0
    ax = -x if x < 0.0 else x
    hi = 0.0
    lo = 0.0
    r = x
    k = 0
    if ax >= _HALF_LN2_UP:
        if ax < _THREE_HALF_LN2:
            if x > 0.0:
                hi = x - _LN2_HI
                lo = _LN2_LO
                k = 1
            else:
                hi = x + _LN2_HI
                lo = -_LN2_LO
                k = -1
        else:
            k = int(_INV_LN2 * x + (0.5 if x > 0.0 else -0.5))  # truncates, like C
            t = float(k)
            hi = x - t * _LN2_HI
            lo = t * _LN2_LO
        r = hi - lo
    elif ax < 2.0**-28:
        return 1.0 + x
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    if k == 0:
        return 1.0 - ((r * c) / (c - 2.0) - r)
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    if k >= -1021:
        if k == 1024:
            return (y * 2.0) * 2.0**1023
        return y * math.ldexp(1.0, k)
    return (y * math.ldexp(1.0, k + 1000)) * 2.0**-1000


def log1p(x: float) -> float:
    """log(1 + x), bit-identical to rng.h's ``log1p_det``; defined for every float.

    Within 1 ulp of :func:`math.log1p` for x > -1 (fdlibm's algorithm), tiny x
    and subnormals included (``log1p(x) = x`` for ``|x| < 2**-54``);
    ``log1p(-1) = -inf``, ``log1p(x < -1) = nan``, ``log1p(inf) = inf``,
    ``log1p(nan) = nan``. The policy's softplus needs x in (0, 1].
    """
    if x != x:
        return x + x
    if x <= -1.0:
        return -math.inf if x == -1.0 else math.nan
    if x == math.inf:
        return x
    ax = -x if x < 0.0 else x
    if ax < 2.0**-29:
        if ax < 2.0**-54:
            return x
        return x - x * x * 0.5
    f = x
    c = 0.0
    dk = 0.0
    k0 = x > _LOG1P_LO and x < _LOG1P_HI
    if not k0:
        u = x
        if x < 2.0**53:
            u = 1.0 + x
            c = 1.0 - (u - x) if u >= 2.0 else x - (u - 1.0)
            c = c / u
        m, e = math.frexp(u)
        if m < _LOG1P_SQRT_HALF:
            m = m * 2.0
            e = e - 1
        f = m - 1.0
        dk = float(e)
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    r = z * (_LG1 + z * (_LG2 + z * (_LG3 + z * (_LG4 + z * (_LG5 + z * (_LG6 + z * _LG7))))))
    if k0:
        return f - (hfsq - s * (hfsq + r))
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + (c + dk * _LN2_LO))) - f)


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
