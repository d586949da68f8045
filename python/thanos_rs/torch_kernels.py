"""ALGORITHM.md in torch ops: the GPU path (and a CPU fallback), float32 or float64.

Same methods, mask rules and tie-breaks as :mod:`thanos_rs.reference` (the
semantic spec), computed the fast way: one Cholesky of the damped H and one
triangular solve give U, the upper Cholesky factor of H^{-1}, and every
trailing inverse ``(H[i:, i:])^{-1} = U[i:, i:]^T U[i:, i:]`` is read off it.
Rows are never looped over in Python: per-row work is batched (padded small
systems, scatters, stable sorts); the loops are over blocks and, for
SparseGPT, over columns.  Everything stays on the tensors' device; the only
host syncs are a few scalars per block (counts that size the next step).

``prune`` and ``prune_as_published`` take clones (they work in place) and
return ``(w_new, mask, damp_used)``.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import spec as S
from .errors import HessianError, InputError
from .reference import MAX_DAMP_RETRIES

__all__ = ["prune", "prune_as_published", "prepare_hessian", "inverse_upper_factor", "remove_block"]

# (i1, i2) -> (G, R): G = Hinv[i1:i2, i1:i2], R = Hinv[i1:i2, i1:] of Hinv = (H[i1:, i1:])^{-1}
BlockFactors = Callable[[int, int], "tuple[torch.Tensor, torch.Tensor]"]


def prune(w: torch.Tensor, h: torch.Tensor, sp: S.LayerSpec):
    """Prune w (c x b) in place given the undamped H; returns (w, mask, damp used)."""
    return _prune(w, h, sp, published=False)


def prune_as_published(w: torch.Tensor, h: torch.Tensor, sp: S.LayerSpec):
    """Thanos exactly as `prune`, but re-inverting H[i1:, i1:] every block (O(b^4/B)).

    For benchmarks only: it shows what the U-factor identity saves.
    """
    if sp.method != "thanos" or sp.pattern.kind == "structured":
        raise InputError("prune_as_published runs Thanos unstructured or N:M only; use prune() for the rest")
    return _prune(w, h, sp, published=True)


def _prune(w, h, sp, published):
    hdiag = h.diagonal().clone()  # scores use the undamped diagonal, dead inputs at 0
    if sp.method == "magnitude":
        return (*_magnitude(w, sp), 0.0)
    if sp.method == "wanda":
        return (*_wanda(w, hdiag, sp), 0.0)
    w0 = w.clone()
    outliers = outlier_rows(w, hdiag, sp.alpha)
    h, low, damp = prepare_hessian(w, h, sp.damp)
    if sp.pattern.kind == "structured":
        mask = _structured(w, inverse_upper_factor(low), hdiag, outliers, sp)
    elif sp.method == "sparsegpt":
        mask = _sparsegpt(w, inverse_upper_factor(low), sp)
    else:
        factors = _published_factors(h) if published else _fast_factors(inverse_upper_factor(low))
        mask = _thanos(w, hdiag, outliers, sp, factors)
    w[outliers] = w0[outliers]  # outlier rows stay bit-identical, dead inputs included
    return w, mask, damp


# ---- Hessian preparation -------------------------------------------------------------


def prepare_hessian(w: torch.Tensor, h: torch.Tensor, damp: float):
    """Dead inputs and damping with retries, in place on w.

    Returns the damped H, the lower Cholesky factor of its flip ``J H J``
    (what `inverse_upper_factor` needs) and the damping actually used.
    """
    dead = h.diagonal() == 0
    h.diagonal().masked_fill_(dead, 1.0)
    w.masked_fill_(dead, 0.0)
    mean = h.diagonal().mean()
    flipped = h.flip(0, 1)  # J H J: its Cholesky factor gives U with one triangular solve
    d = damp
    for attempt in range(MAX_DAMP_RETRIES + 1):
        hd = flipped.clone()
        hd.diagonal().add_(d * mean)
        low, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            return hd.flip(0, 1), low, d
        if attempt < MAX_DAMP_RETRIES:
            d *= 10
    raise HessianError(
        f"Hessian is not positive definite even with damping {d:g} x mean(diag(H)); check that "
        "H = (2/n) X X^T was accumulated from finite activations, or pass a larger damp"
    )


def inverse_upper_factor(low: torch.Tensor) -> torch.Tensor:
    """U with H^{-1} = U^T U, from L = cholesky(J H J): U = J L^{-1} J (no H^{-1} formed)."""
    eye = torch.eye(low.shape[0], dtype=low.dtype, device=low.device)
    return torch.linalg.solve_triangular(low, eye, upper=False).flip(0, 1)


def _fast_factors(u: torch.Tensor) -> BlockFactors:
    """G and R of a block from U: Hinv[i1:i2, i1:] = U_blk^T U[i1:i2, i1:] (U is triangular)."""

    def factors(i1: int, i2: int):
        r = u[i1:i2, i1:i2].T @ u[i1:i2, i1:]
        return r[:, : i2 - i1], r

    return factors


def _published_factors(h: torch.Tensor) -> BlockFactors:
    """G and R of a block from a fresh inverse of the trailing Hessian, as the paper's code."""

    def factors(i1: int, i2: int):
        hinv = torch.linalg.inv(h[i1:, i1:])
        return hinv[: i2 - i1, : i2 - i1], hinv[: i2 - i1]

    return factors


# ---- selections (the reference's tie-breaks, exactly) --------------------------------


def smallest_global(scores: torch.Tensor, r: int) -> torch.Tensor:
    """Bool mask of the r smallest entries by (score, row, column).

    A threshold plus a tie fix-up instead of a full sort: everything below the
    r-th smallest value, then the first ties in row-major order up to r.
    """
    r = max(0, min(r, scores.numel()))
    if r in (0, scores.numel()):
        return torch.full_like(scores, r > 0, dtype=torch.bool)
    t = _kth_smallest(scores.flatten(), r)
    below = scores < t
    ties = scores == t
    first_ties = ties.flatten().cumsum(0) <= r - below.sum()
    return below | (ties & first_ties.view_as(ties))


def _kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    # CPU kthvalue is a linear-time select; on GPUs a radix sort of one long slice is the
    # fast, well-parallelised primitive (kthvalue runs one thread block per slice there).
    if flat.device.type == "cpu":
        return flat.kthvalue(k).values
    return flat.sort().values[k - 1]


def smallest_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool mask of the counts[k] smallest entries of each row k, ties to the lower column."""
    order = torch.argsort(scores, dim=1, stable=True)
    ranks_taken = torch.arange(scores.shape[1], device=scores.device) < counts[:, None]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, ranks_taken)


def smallest_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask with the n smallest of every group of m consecutive columns of each row."""
    c, b = scores.shape
    groups = scores.reshape(c, b // m, m)
    first = torch.argsort(groups, dim=-1, stable=True)[..., :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, first, True).reshape(c, b)


def smallest_columns(v: torch.Tensor, s: int) -> torch.Tensor:
    """Bool vector of the s smallest column scores, ties to the lower column."""
    cols = torch.zeros_like(v, dtype=torch.bool)
    cols[torch.argsort(v, stable=True)[:s]] = True
    return cols


def outlier_rows(w: torch.Tensor, hdiag: torch.Tensor, alpha: float) -> torch.Tensor:
    """The ceil(alpha*c) rows with the largest h_k = sum_j W_kj^2 H_jj (kept dense)."""
    c = w.shape[0]
    hk = (w * w) @ hdiag
    out = torch.zeros(c, dtype=torch.bool, device=w.device)
    out[torch.argsort(-hk, stable=True)[: S.n_outlier_rows(alpha, c)]] = True
    return out


def thanos_scores(w: torch.Tensor, hdiag: torch.Tensor) -> torch.Tensor:
    return w.abs() * hdiag.sqrt()


# ---- Thanos ----------------------------------------------------------------------------


def _thanos(w, hdiag, outliers, sp, factors: BlockFactors):
    """Block loop: choose the block mask on the current W, then the exact joint update."""
    c, b = w.shape
    bs = sp.block_for(b)
    target = S.target_zeros(sp.sparsity, c, b)
    mask = torch.zeros_like(w, dtype=torch.bool)
    made = 0
    for i1 in range(0, b, bs):
        i2 = min(i1 + bs, b)
        if sp.pattern.kind == "nm":
            blk = smallest_nm(thanos_scores(w[:, i1:i2], hdiag[i1:i2]), sp.pattern.n, sp.pattern.m)
            blk[outliers] = False
        else:  # global residual mask over all remaining columns, restricted to the block
            blk = smallest_global(thanos_scores(w[:, i1:], hdiag[i1:]), target - made)[:, : i2 - i1]
            made += int(blk.sum())
        remove_block(w, blk, i1, *factors(i1, i2))
        mask[:, i1:i2] = blk
    return mask


def remove_block(w, blk, i1, g, r):
    """W[:, i1:] -= L R with lambda_k = G[Q_k, Q_k]^{-1} w[Q_k], all rows in one batch.

    Every row's system is padded to the widest row's size s: padding entries
    index s extra columns appended to G as an identity block (and to w as
    zeros), so one gather builds block-diagonal systems [G[Q_k, Q_k], I] whose
    padding solves to lambda = 0, with no masking pass over the c x s x s batch.
    """
    c, bw = blk.shape
    counts = blk.sum(1)
    s = int(counts.max())
    if s == 0:
        return
    # per row: its removed columns first (in column order), then padding indices bw..bw+s-1
    first = torch.argsort((~blk).to(torch.uint8), dim=1, stable=True)[:, :s]
    slot = torch.arange(s, device=w.device)
    idx = torch.where(slot < counts[:, None], first, bw + slot)
    g_pad = torch.block_diag(g, torch.eye(s, dtype=g.dtype, device=g.device))
    systems = g_pad[idx[:, :, None], idx[:, None, :]]
    rhs = torch.cat([w[:, i1 : i1 + bw], w.new_zeros(c, s)], dim=1).gather(1, idx)
    lam = _spd_solve(systems, rhs[..., None])[..., 0]
    lam_full = w.new_zeros(c, bw + s).scatter_(1, idx, lam)[:, :bw]
    w[:, i1:] -= lam_full @ r
    w[:, i1 : i1 + bw].masked_fill_(blk, 0.0)  # exact zeros, not round-off


def _spd_solve(a: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve (batched) SPD systems; those that float32 rounding made indefinite are redone in float64."""
    chol, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(rhs, chol)
    bad = info != 0
    if bool(bad.any()):
        a64, rhs64 = a.double(), rhs.double()
        if a.dim() > 2:
            a64, rhs64 = a64[bad], rhs64[bad]
        chol64, info64 = torch.linalg.cholesky_ex(a64)
        if bool((info64 != 0).any()):
            raise HessianError("a principal submatrix of the inverse Hessian is singular; pass a larger damp")
        fixed = torch.cholesky_solve(rhs64, chol64).to(x.dtype)
        if a.dim() > 2:
            x[bad] = fixed
        else:
            x = fixed
    return x


# ---- structured (Thanos with outlier rows; SparseGPT with alpha = 0) ------------------


def _structured(w, u, hdiag, outliers, sp):
    """Remove whole columns S with one shared solve: Delta = -W[:,S] Hinv[S,S]^{-1} Hinv[S,:]."""
    c, b = w.shape
    if sp.method == "thanos":
        v = hdiag * (w[~outliers] ** 2).sum(0)
        s = S.structured_columns(sp.sparsity, sp.alpha, b)
    else:  # SparseGPT: OBS column saliency sum_i W_ij^2 / Hinv_jj, Hinv_jj = ||U[:, j]||^2
        v = (w**2).sum(0) / (u * u).sum(0)
        s = S.ceil_count(sp.sparsity * b)
    cols = smallest_columns(v, s)
    if s:
        q = cols.nonzero().squeeze(1)
        hinv_q = u[:, q].T @ u  # Hinv[S, :]; outlier rows are updated too, then restored
        lam = _spd_solve(hinv_q[:, q], w[:, q].T)
        w -= lam.T @ hinv_q
        w[:, q] = 0.0
    return (~outliers)[:, None] & cols[None, :]


# ---- SparseGPT ---------------------------------------------------------------------------


def _sparsegpt(w, u, sp):
    """sparsegpt.py's fasterprune: column-by-column OBS with lazy block updates through U."""
    c, b = w.shape
    bs = sp.block_for(b)
    d2 = u.diagonal() ** 2  # OBS denominator of column j: ((H[j:, j:])^{-1})_00 = U_jj^2
    mask = torch.zeros_like(w, dtype=torch.bool)
    n, m = sp.pattern.n, sp.pattern.m
    for i1 in range(0, b, bs):
        i2 = min(i1 + bs, b)
        if sp.pattern.kind == "unstructured":
            r = S.cumulative_share(sp.sparsity, c, i2) - S.cumulative_share(sp.sparsity, c, i1)
            mask[:, i1:i2] = smallest_global(w[:, i1:i2] ** 2 / d2[i1:i2], r)
        w1 = w[:, i1:i2].clone()  # the block, contiguous: the column loop updates it in place
        err = torch.empty_like(w1)
        for j in range(i2 - i1):
            col = i1 + j
            if sp.pattern.kind == "nm" and col % m == 0:
                mask[:, col : col + m] = smallest_nm(w1[:, j : j + m] ** 2 / d2[col : col + m], n, m)
            err[:, j] = w1[:, j] * mask[:, col] / u[col, col]
            w1[:, j:].addcmul_(err[:, j, None], u[col, col:i2], value=-1)
        w[:, i1:i2] = w1.masked_fill_(mask[:, i1:i2], 0.0)  # exact zeros, not round-off
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return mask


# ---- baselines without an update ------------------------------------------------------


def _wanda(w, hdiag, sp):
    c, b = w.shape
    kind = sp.pattern.kind
    if kind == "nm":
        mask = smallest_nm(thanos_scores(w, hdiag), sp.pattern.n, sp.pattern.m)
    elif kind == "unstructured":
        shares = [S.cumulative_share(sp.sparsity, b, k) for k in range(c + 1)]
        counts = torch.tensor(shares, device=w.device).diff()
        mask = smallest_per_row(thanos_scores(w, hdiag), counts)
    else:
        mask = _columns_mask(hdiag * (w**2).sum(0), S.ceil_count(sp.sparsity * b), c)
    return w.masked_fill_(mask, 0.0), mask


def _magnitude(w, sp):
    c, b = w.shape
    kind = sp.pattern.kind
    if kind == "nm":
        mask = smallest_nm(w.abs(), sp.pattern.n, sp.pattern.m)
    elif kind == "unstructured":
        mask = smallest_global(w.abs(), S.target_zeros(sp.sparsity, c, b))
    else:
        mask = _columns_mask((w**2).sum(0), S.ceil_count(sp.sparsity * b), c)
    return w.masked_fill_(mask, 0.0), mask


def _columns_mask(v: torch.Tensor, s: int, c: int) -> torch.Tensor:
    return smallest_columns(v, s).expand(c, -1).clone()
