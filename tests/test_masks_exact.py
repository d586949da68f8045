"""Exact properties every backend must have, checked on the result alone.

Counts (zeros, N per group of M, outlier rows, removed columns), exact zeros,
bit-identical outlier rows, the update never hurting, the Thanos block step
being the least-squares optimum, and the type/dtype/device round trip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thanos_rs import layer_loss, prune_layer, reference
from thanos_rs import spec as S
from thanos_rs import torch_kernels

BACKENDS = ["reference", "torch", "rust"]
METHODS = ["thanos", "sparsegpt", "wanda", "magnitude"]
METHOD_ALPHA = [("thanos", 0.0), ("thanos", 0.25), ("sparsegpt", 0.0), ("wanda", 0.0), ("magnitude", 0.0)]

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: no oversubscription


def random_layer(seed: int, c: int, b: int, tokens: int | None = None):
    """A float64 layer and H = 2 X X^T / a (well conditioned unless tokens < b)."""
    rng = np.random.default_rng(seed)
    a = tokens or 4 * b
    x = rng.standard_normal((b, a)) * np.exp(0.5 * rng.standard_normal((b, 1)))
    w = rng.standard_normal((c, b)) * np.exp(0.5 * rng.standard_normal(b))
    return w, 2 * x @ x.T / a


def damped(h: np.ndarray, damp: float) -> np.ndarray:
    return h + damp * np.mean(np.diag(h)) * np.eye(len(h))


def expected_outliers(w: np.ndarray, h: np.ndarray, alpha: float) -> np.ndarray:
    return reference.outlier_rows(np.asarray(w, dtype=np.float64), np.diag(h).astype(np.float64), alpha)


# ---- counts and exact zeros --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=60)
@given(
    method=st.sampled_from(METHODS),
    c=st.integers(1, 20),
    b=st.integers(1, 30),
    sparsity=st.floats(0.0, 1.0),
    block=st.integers(1, 12),
    seed=st.integers(0, 2**31),
)
def test_unstructured_zero_count_is_exact(backend, method, c, b, sparsity, block, seed):
    w, h = random_layer(seed, c, b)
    out = prune_layer(w, h, method, "unstructured", sparsity, block_size=block, backend=backend)
    assert out.mask.sum() == S.target_zeros(sparsity, c, b)
    np.testing.assert_array_equal(out.weight[out.mask], 0.0)
    # nothing else becomes exactly zero (continuous random weights, no dead inputs)
    assert (out.weight == 0).sum() == out.mask.sum()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "alpha"), METHOD_ALPHA)
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8", "2:8"])
def test_nm_groups_have_exactly_n_zeros(backend, method, alpha, pattern):
    n, m = map(int, pattern.split(":"))
    c, b = 13, 48
    w, h = random_layer(1, c, b)
    out = prune_layer(w, h, method, pattern, alpha=alpha, block_size=20, backend=backend)
    pruned = ~expected_outliers(w, h, alpha)
    groups = out.mask.reshape(c, b // m, m).sum(axis=2)
    assert (groups[pruned] == n).all()
    assert (groups[~pruned] == 0).all()
    np.testing.assert_array_equal(out.weight[out.mask], 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "alpha"), METHOD_ALPHA)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_structured_removes_whole_columns(backend, method, alpha, sparsity):
    c, b = 16, 21
    w, h = random_layer(2, c, b)
    out = prune_layer(w, h, method, "structured", sparsity, alpha=alpha, backend=backend)
    rows = ~expected_outliers(w, h, alpha)
    cols = out.mask[rows].any(axis=0)
    s = S.structured_columns(sparsity, alpha, b) if method == "thanos" else S.ceil_count(sparsity * b)
    assert cols.sum() == s
    assert (out.mask[rows] == cols).all() and not out.mask[~rows].any()
    np.testing.assert_array_equal(out.weight[np.ix_(rows, cols)], 0.0)
    n_out = S.n_outlier_rows(alpha, c)
    assert out.sparsity == pytest.approx(s * (c - n_out) / (c * b))


# ---- outlier rows --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("pattern", ["2:4", "structured"])
@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5])
def test_outlier_rows_are_bit_identical(backend, dtype, pattern, alpha):
    c, b = 20, 32
    w64, h64 = random_layer(3, c, b)
    h64[5, :] = h64[:, 5] = 0.0  # a dead input: zeroed in pruned rows, kept in outlier rows
    w = torch.from_numpy(w64).to(dtype)
    h = torch.from_numpy(h64).float()
    out = prune_layer(w, h, "thanos", pattern, 0.5, alpha=alpha, block_size=8, backend=backend)
    rows = torch.from_numpy(expected_outliers(w.double().numpy(), h.double().numpy(), alpha))
    assert int(rows.sum()) == S.n_outlier_rows(alpha, c)
    assert torch.equal(out.weight[rows], w[rows])
    assert not out.mask[rows].any()
    assert not torch.equal(out.weight[~rows], w[~rows])


# ---- the update helps, and is the least-squares optimum --------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=50)
@given(
    pattern=st.sampled_from(["unstructured", "2:4", "structured"]),
    sparsity=st.sampled_from([0.3, 0.5, 0.8]),
    seed=st.integers(0, 2**31),
)
def test_update_beats_zeroing_with_the_same_mask(backend, pattern, sparsity, seed):
    """A Thanos block step costs no more than zeroing the same weights (OBS >= nothing).

    Exact for the damped H the step minimises, with one block over the whole layer: the
    step is then the H-orthogonal projection onto {W' : W'[mask] = 0}. Sequential removal
    (Thanos block after block, SparseGPT column after column) has no such guarantee: each
    step is optimal for the weights the earlier steps left, and in rare layers the sum
    loses to plain zeroing. Found by this test when it drew several blocks: seed 11218
    (12 x 32, unstructured 0.8, block 1) gives 0.11078 vs 0.11067 for Thanos, the float64
    reference alike; SparseGPT does so at seed 124470445.
    """
    c, b = 12, 32
    w, h = random_layer(seed, c, b)
    out = prune_layer(w, h, "thanos", pattern, sparsity, block_size=b, backend=backend)
    wt, hd = torch.from_numpy(w), torch.from_numpy(damped(h, out.damp))
    zeroed = layer_loss(wt, wt.masked_fill(torch.from_numpy(out.mask), 0.0), hd)
    updated = layer_loss(wt, torch.as_tensor(out.weight), hd)
    assert updated <= zeroed * (1 + 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_single_block_is_the_least_squares_optimum(backend, pattern):
    """With one block covering the layer, row k is reference.remove(w_k, H_damped, Q_k, rest)."""
    c, b = 9, 24
    w, h = random_layer(4, c, b)
    out = prune_layer(w, h, "thanos", pattern, 0.5, block_size=b, damp=0.01, backend=backend)
    hd = damped(h, 0.01)
    for k in range(c):
        q = np.flatnonzero(out.mask[k])
        f = np.flatnonzero(~out.mask[k])
        np.testing.assert_allclose(out.weight[k], reference.remove(w[k], hd, q, f), rtol=0, atol=1e-12)


def test_torch_block_step_is_the_least_squares_optimum():
    """One inner block (i1 > 0) with an arbitrary mask, rows removing 0..B weights each."""
    c, b, i1, i2 = 11, 30, 8, 18
    w, h = random_layer(5, c, b)
    hd = damped(h, 0.01)
    blk = np.random.default_rng(6).random((c, i2 - i1)) < np.linspace(0, 1, c)[:, None]
    low = torch.linalg.cholesky(torch.from_numpy(hd).flip(0, 1))
    u = torch_kernels.inverse_upper_factor(low)
    g = u[i1:i2, i1:i2].T @ u[i1:i2, i1:]
    wt = torch.from_numpy(w.copy())
    torch_kernels.remove_block(wt, torch.from_numpy(blk), i1, g[:, : i2 - i1], g)
    for k in range(c):
        q = i1 + np.flatnonzero(blk[k])
        f = np.setdiff1d(np.arange(i1, b), q)
        np.testing.assert_allclose(wt[k].numpy(), reference.remove(w[k], hd, q, f), rtol=0, atol=1e-12)


def test_inverse_upper_factor_gives_every_trailing_inverse():
    _, h = random_layer(8, 1, 25)
    hd = torch.from_numpy(damped(h, 0.01))
    u = torch_kernels.inverse_upper_factor(torch.linalg.cholesky(hd.flip(0, 1)))
    assert torch.equal(u, u.triu())
    for i in (0, 1, 12, 24):
        trailing = torch.linalg.inv(hd[i:, i:])
        torch.testing.assert_close(u[i:, i:].T @ u[i:, i:], trailing, rtol=1e-10, atol=1e-12)


# ---- types round trip -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_torch_in_torch_out(backend, dtype, method):
    w, h = random_layer(9, 8, 16)
    wt = torch.from_numpy(w).to(dtype)
    out = prune_layer(wt, torch.from_numpy(h).float(), method, "2:4", backend=backend)
    assert isinstance(out.weight, torch.Tensor) and isinstance(out.mask, torch.Tensor)
    assert out.weight.dtype == dtype and out.weight.device == wt.device and out.weight.shape == wt.shape
    assert out.mask.dtype == torch.bool and out.mask.shape == wt.shape
    assert torch.equal(wt, torch.from_numpy(w).to(dtype))  # the input is not modified


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_numpy_in_numpy_out(backend, dtype, method):
    w, h = random_layer(10, 8, 16)
    wn = w.astype(dtype)
    out = prune_layer(wn, h, method, "unstructured", backend=backend)
    assert isinstance(out.weight, np.ndarray) and isinstance(out.mask, np.ndarray)
    assert out.weight.dtype == dtype and out.weight.shape == wn.shape
    assert out.mask.dtype == np.bool_ and out.mask.shape == wn.shape
    np.testing.assert_array_equal(wn, w.astype(dtype))
