"""Float64 reference solver: ALGORITHM.md written for clarity, not speed.

Every fast path (Rust, torch) is compared against this module in property
tests.  It never forms H^{-1} for an update: each removal is the plain
least-squares problem

    minimise (w' - w) H (w' - w)^T   subject to   w'[Q] = 0, w'[frozen] = w[frozen]

solved on H itself, ``Delta[F] = H[F,F]^{-1} H[F,Q] w[Q]``.  Masks are chosen
by the same rules, with the same tie-break, as the fast backends:

* global selections (Thanos unstructured, SparseGPT block, magnitude) take the
  r smallest by (score, row, column);
* per-row and per-group selections take the smallest by (score, column);
* outlier rows are the largest h_k, ties to the lower row;
* structured columns are the smallest column scores, ties to the lower column.
"""

from __future__ import annotations

import numpy as np

from . import spec as S
from .errors import HessianError

MAX_DAMP_RETRIES = 3


def prune(w: np.ndarray, h: np.ndarray, sp: S.LayerSpec):
    """Return (pruned weight, mask, damping used) computed on float64 copies of w, h."""
    w = np.array(w, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    hdiag = np.diag(h).copy()
    if sp.method == "magnitude":
        return (*_magnitude(w, sp), 0.0)
    if sp.method == "wanda":
        return (*_wanda(w, hdiag, sp), 0.0)
    w0 = w.copy()
    outliers = outlier_rows(w, hdiag, sp.alpha)
    h, damp = prepare_hessian(w, h, sp.damp)
    kind = sp.pattern.kind
    if kind == "structured":
        w, mask = _structured(w, h, hdiag, ~outliers, sp)
    elif sp.method == "sparsegpt":
        w, mask = _sparsegpt(w, h, sp)
    elif kind == "nm":
        w, mask = _thanos_nm(w, h, hdiag, ~outliers, sp)
    else:
        w, mask = _thanos_unstructured(w, h, hdiag, sp)
    w[outliers] = w0[outliers]  # outlier rows stay bit-identical, dead inputs included
    return w, mask, damp


def prepare_hessian(w: np.ndarray, h: np.ndarray, damp: float):
    """Dead inputs and damping with retries, in place on w (ALGORITHM.md, Notation)."""
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    mean = np.mean(np.diag(h))
    d = damp
    for attempt in range(MAX_DAMP_RETRIES + 1):
        hd = h + d * mean * np.eye(h.shape[0])
        try:
            np.linalg.cholesky(hd)
            return hd, d
        except np.linalg.LinAlgError:
            if attempt < MAX_DAMP_RETRIES:
                d *= 10
    raise HessianError(
        f"Hessian is not positive definite even with damping {d:g} x mean(diag(H)); check that "
        "H = (2/n) X X^T was accumulated from finite activations, or pass a larger damp"
    )


def remove(w: np.ndarray, h: np.ndarray, q: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Optimal row after zeroing columns q, moving only columns f (least squares on H)."""
    out = w.copy()
    if len(f) and len(q):
        out[f] += np.linalg.solve(h[np.ix_(f, f)], h[np.ix_(f, q)] @ w[q])
    out[q] = 0.0
    return out


def smallest_global(scores: np.ndarray, r: int) -> np.ndarray:
    """Bool mask of the r smallest entries by (score, row, column)."""
    flat = scores.ravel()
    order = np.lexsort((np.arange(flat.size), flat))
    sel = np.zeros(flat.size, dtype=bool)
    sel[order[: max(0, min(r, flat.size))]] = True
    return sel.reshape(scores.shape)


def smallest_per_row(scores: np.ndarray, counts) -> np.ndarray:
    """Bool mask of the counts[k] smallest entries of each row k, ties to the lower column."""
    mask = np.zeros(scores.shape, dtype=bool)
    for k, row in enumerate(scores):
        order = np.lexsort((np.arange(row.size), row))
        mask[k, order[: counts[k]]] = True
    return mask


def smallest_nm(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Bool mask with the n smallest of every group of m consecutive columns of each row."""
    c, b = scores.shape
    mask = np.zeros((c, b), dtype=bool)
    for g in range(0, b, m):
        mask[:, g : g + m] = smallest_per_row(scores[:, g : g + m], [n] * c)
    return mask


def outlier_rows(w: np.ndarray, hdiag: np.ndarray, alpha: float) -> np.ndarray:
    """The ceil(alpha*c) rows with the largest h_k = sum_j W_kj^2 H_jj (kept dense)."""
    c = w.shape[0]
    hk = (w**2) @ hdiag
    order = np.lexsort((np.arange(c), -hk))
    out = np.zeros(c, dtype=bool)
    out[order[: S.n_outlier_rows(alpha, c)]] = True
    return out


def thanos_scores(w: np.ndarray, hdiag: np.ndarray) -> np.ndarray:
    return np.abs(w) * np.sqrt(hdiag)


def _thanos_unstructured(w, h, hdiag, sp):
    c, b = w.shape
    bs = sp.block_for(b)
    target = S.target_zeros(sp.sparsity, c, b)
    mask = np.zeros((c, b), dtype=bool)
    for i1 in range(0, b, bs):
        i2 = min(i1 + bs, b)
        sel = smallest_global(thanos_scores(w[:, i1:], hdiag[i1:]), target - int(mask.sum()))
        blk = sel[:, : i2 - i1]
        _thanos_block(w, h, blk, i1)
        mask[:, i1:i2] = blk
    return w, mask


def _thanos_nm(w, h, hdiag, rows, sp):
    c, b = w.shape
    bs = sp.block_for(b)
    mask = np.zeros((c, b), dtype=bool)
    for i1 in range(0, b, bs):
        i2 = min(i1 + bs, b)
        blk = smallest_nm(thanos_scores(w[:, i1:i2], hdiag[i1:i2]), sp.pattern.n, sp.pattern.m)
        blk[~rows] = False
        _thanos_block(w, h, blk, i1)
        mask[:, i1:i2] = blk
    return w, mask


def _thanos_block(w, h, blk, i1):
    """Each row removes its block columns Q_k; columns [i1, b) minus Q_k may move."""
    b = w.shape[1]
    for k in np.flatnonzero(blk.any(axis=1)):
        q = i1 + np.flatnonzero(blk[k])
        f = np.setdiff1d(np.arange(i1, b), q)
        w[k] = remove(w[k], h, q, f)


def _structured(w, h, hdiag, rows, sp):
    """Remove whole input columns S from the non-outlier rows with one joint update."""
    c, b = w.shape
    if sp.method == "thanos":
        v = hdiag * (w[rows] ** 2).sum(axis=0)
        s = S.structured_columns(sp.sparsity, sp.alpha, b)
    else:  # SparseGPT: OBS column saliency sum_i W_ij^2 / Hinv_jj
        v = (w**2).sum(axis=0) / np.diag(np.linalg.inv(h))
        s = S.ceil_count(sp.sparsity * b)
    cols = smallest_per_row(v[None, :], [s])[0]
    q, f = np.flatnonzero(cols), np.flatnonzero(~cols)
    mask = np.zeros((c, b), dtype=bool)
    for k in np.flatnonzero(rows):
        w[k] = remove(w[k], h, q, f)
        mask[k, q] = True
    return w, mask


def _sparsegpt(w, h, sp):
    """Column-by-column OBS; the mask is chosen every block (or every m columns for N:M)."""
    c, b = w.shape
    bs = sp.block_for(b)
    # d_j = U_jj^2 = ((H[j:, j:])^{-1})_{00}: the OBS denominator of column j
    d = np.array([np.linalg.inv(h[j:, j:])[0, 0] for j in range(b)])
    mask = np.zeros((c, b), dtype=bool)
    n, m = sp.pattern.n, sp.pattern.m
    for i1 in range(0, b, bs):
        i2 = min(i1 + bs, b)
        if sp.pattern.kind == "unstructured":
            r = S.cumulative_share(sp.sparsity, c, i2) - S.cumulative_share(sp.sparsity, c, i1)
            mask[:, i1:i2] = smallest_global(w[:, i1:i2] ** 2 / d[i1:i2], r)
        for j in range(i1, i2):
            if sp.pattern.kind == "nm" and j % m == 0:
                mask[:, j : j + m] = smallest_nm(w[:, j : j + m] ** 2 / d[j : j + m], n, m)
            f = np.arange(j + 1, b)
            for k in np.flatnonzero(mask[:, j]):
                w[k] = remove(w[k], h, np.array([j]), f)
    return w, mask


def _wanda(w, hdiag, sp):
    c, b = w.shape
    score = np.abs(w) * np.sqrt(hdiag)
    kind = sp.pattern.kind
    if kind == "nm":
        mask = smallest_nm(score, sp.pattern.n, sp.pattern.m)
    elif kind == "unstructured":
        counts = [S.cumulative_share(sp.sparsity, b, k + 1) - S.cumulative_share(sp.sparsity, b, k) for k in range(c)]
        mask = smallest_per_row(score, counts)
    else:
        mask = _columns_mask(hdiag * (w**2).sum(axis=0), S.ceil_count(sp.sparsity * b), c)
    w[mask] = 0.0
    return w, mask


def _magnitude(w, sp):
    c, b = w.shape
    kind = sp.pattern.kind
    if kind == "nm":
        mask = smallest_nm(np.abs(w), sp.pattern.n, sp.pattern.m)
    elif kind == "unstructured":
        mask = smallest_global(np.abs(w), S.target_zeros(sp.sparsity, c, b))
    else:
        mask = _columns_mask((w**2).sum(axis=0), S.ceil_count(sp.sparsity * b), c)
    w[mask] = 0.0
    return w, mask


def _columns_mask(v: np.ndarray, s: int, c: int) -> np.ndarray:
    cols = smallest_per_row(v[None, :], [s])[0]
    return np.broadcast_to(cols, (c, cols.size)).copy()
