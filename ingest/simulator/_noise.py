"""Counter-based (stateless) pseudo-random numbers.

Every random number the simulator uses is a pure function of integer keys (seed, site,
point, timestamp, ...), so results never depend on how a time range is split into polls.
The mixer is SplitMix64 (Steele, Lea & Flood 2014).
"""

from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def key(*parts: object) -> np.ndarray:
    """Hash integer / string / integer-array parts into a uint64 array (broadcasting)."""
    with np.errstate(over="ignore"):
        h = np.zeros((), dtype=np.uint64)
        for part in parts:
            if isinstance(part, str):
                part = zlib.crc32(part.encode("utf-8"))
            arr = np.asarray(part)
            if arr.dtype.kind == "i":
                arr = arr.astype(np.int64).view(np.uint64) if arr.ndim else np.uint64(int(arr) & (2**64 - 1))
            arr = np.asarray(arr, dtype=np.uint64)
            h = _mix(h ^ arr)
        return h


def uniform(*parts: object) -> np.ndarray:
    """Uniform numbers in (0, 1], one per broadcast element of ``parts``."""
    h = key(*parts)
    return ((h >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)


def normal(*parts: object) -> np.ndarray:
    """Standard normal numbers (Box–Muller over two independent uniforms)."""
    u1 = uniform(*parts, 0x51)
    u2 = uniform(*parts, 0x52)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def ar1_at(index: np.ndarray, phi: float, sigma: float, *parts: object, terms: int = 48) -> np.ndarray:
    """A stationary AR(1) process ``x[i] = phi x[i-1] + e[i]`` evaluated at integer ``index``.

    Uses the truncated moving-average form ``x[i] = sum_k phi^k e[i-k]`` so any index can be
    evaluated without state; ``sigma`` is the stationary standard deviation. ``index`` may
    have any shape; ``parts`` (broadcast against ``index[..., None]``) select the stream.
    """
    index = np.asarray(index, dtype=np.int64)
    lags = np.arange(terms, dtype=np.int64)
    weights = phi ** lags.astype(np.float64)
    shocks = normal(*[np.asarray(p)[..., None] if not isinstance(p, str) else p for p in parts],
                    index[..., None] - lags)
    total = np.zeros(shocks.shape[:-1])
    for k in range(terms):  # fixed summation order (a BLAS dot product need not be reproducible)
        total = total + weights[k] * shocks[..., k]
    return total * sigma * np.sqrt(1.0 - phi * phi)


def smooth_ar1(ts_ms: np.ndarray, period_ms: int, phi: float, sigma: float, *parts: object) -> np.ndarray:
    """An AR(1) process with one value per ``period_ms`` (at period centres), linearly interpolated.

    ``ts_ms`` (T,) int64; ``parts`` select the stream and may include (S, 1) arrays; result (S, T).
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    shifted = ts_ms - period_ms // 2
    node0 = shifted // period_ms
    frac = (shifted - node0 * period_ms) / period_ms
    if len(ts_ms) == 0:
        nodes = ar1_at(np.zeros((1, 2), np.int64), phi, sigma, *parts)
        return nodes[..., :0]
    first = int(node0.min())
    idx = np.arange(first, int(node0.max()) + 2, dtype=np.int64)
    nodes = ar1_at(idx[None, :], phi, sigma, *parts)
    i = node0 - first
    return nodes[..., i] * (1.0 - frac) + nodes[..., i + 1] * frac
