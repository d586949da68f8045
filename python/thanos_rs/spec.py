"""The parsed, validated description of one layer-pruning job, and the counts.

Every backend (Rust, torch, reference) takes its counts from the functions
here (or their Rust twins in ``rust/thanos-core/src/config.rs``), so the
number of zeros, outlier rows and removed columns is identical everywhere.
Rounding is half-up (``floor(x + 0.5)``) in every backend; ``ceil`` ignores
float noise below 1e-9 so ``ceil(0.7 * 10)`` is 7, not 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError

METHODS = ("thanos", "sparsegpt", "wanda", "magnitude")
BACKENDS = ("auto", "rust", "torch", "reference")


@dataclass(frozen=True)
class Pattern:
    """``kind`` is "unstructured", "nm" or "structured"; n and m only for "nm"."""

    kind: str
    n: int = 0
    m: int = 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind


@dataclass(frozen=True)
class LayerSpec:
    method: str
    pattern: Pattern
    sparsity: float
    alpha: float
    block_size: int
    damp: float

    def block_for(self, b: int) -> int:
        """The block width actually used: a multiple of m for N:M, at most b."""
        bs = self.block_size
        if self.pattern.kind == "nm":
            m = self.pattern.m
            bs = max(m, bs - bs % m)
        return max(1, min(bs, b))


def parse_pattern(pattern: str) -> Pattern:
    if not isinstance(pattern, str):
        raise InputError(f"pattern must be a string like 'unstructured', '2:4' or 'structured', got {pattern!r}")
    p = pattern.strip().lower()
    if p in ("unstructured", "structured"):
        return Pattern(p)
    if ":" in p:
        a, _, b = p.partition(":")
        try:
            n, m = int(a), int(b)
        except ValueError:
            raise InputError(f"N:M pattern must be two integers like '2:4', got {pattern!r}") from None
        if not (0 < n < m):
            raise InputError(f"N:M pattern needs 0 < N < M (N zeros in every M weights), got {pattern!r}")
        return Pattern("nm", n, m)
    raise InputError(
        f"unknown pattern {pattern!r}: use 'unstructured', 'structured' or 'N:M' such as '2:4' or '4:8'"
    )


def make_spec(
    method: str,
    pattern: str,
    sparsity: float,
    alpha: float,
    block_size: int,
    damp: float,
) -> LayerSpec:
    """Validate the user's arguments (shape-independent checks) into a LayerSpec."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    pat = parse_pattern(pattern)
    sparsity = _finite_float("sparsity", sparsity)
    if not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity must be a fraction in [0, 1], got {sparsity} (did you mean {sparsity / 100:g}?)"
                         if 1 < sparsity <= 100 else f"sparsity must be a fraction in [0, 1], got {sparsity}")
    alpha = _finite_float("alpha", alpha)
    if not 0.0 <= alpha < 1.0:
        raise InputError(f"alpha (outlier-row fraction) must be in [0, 1), got {alpha}")
    if alpha > 0 and method != "thanos":
        raise InputError(f"alpha (outlier rows) belongs to Thanos; method {method!r} needs alpha=0")
    if alpha > 0 and pat.kind == "unstructured":
        raise InputError("alpha (outlier rows) applies to N:M and structured patterns; use alpha=0 for unstructured")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    damp = _finite_float("damp", damp)
    if not damp > 0.0:
        raise InputError(f"damp must be > 0 (a fraction of mean(diag(H)), e.g. 0.01), got {damp}")
    return LayerSpec(method, pat, sparsity, alpha, block_size, damp)


def check_width(spec: LayerSpec, b: int) -> None:
    """Shape-dependent check: N:M groups must tile the input width."""
    if spec.pattern.kind == "nm" and b % spec.pattern.m:
        raise InputError(
            f"pattern {spec.pattern} needs the input width to be a multiple of {spec.pattern.m}, "
            f"but the layer has {b} input columns; use a pattern whose M divides {b}"
        )


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def ceil_count(x: float) -> int:
    return max(0, int(math.ceil(x - 1e-9)))


def target_zeros(p: float, c: int, b: int) -> int:
    """Unstructured: the exact number of zeros in a c x b layer at sparsity p."""
    return round_half_up(p * (c * b))


def cumulative_share(p: float, unit: int, i: int) -> int:
    """Zeros owed to the first i units (rows or columns) of size `unit`.

    Differences of this give per-row (Wanda) or per-block (SparseGPT) counts
    that differ by at most one and add up exactly to round(p * unit * total).
    """
    return round_half_up(p * (unit * i))


def n_outlier_rows(alpha: float, c: int) -> int:
    return min(c, ceil_count(alpha * c))


def structured_columns(p: float, alpha: float, b: int) -> int:
    """Thanos structured: columns removed from the non-outlier rows."""
    return min(b, ceil_count(p * b / (1.0 - alpha)))


def _finite_float(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{name} must be finite, got {value!r}")
    return v
