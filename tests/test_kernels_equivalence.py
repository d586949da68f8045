"""The fast backends agree with the float64 reference (reference.py is the spec).

Random layers, drawn by hypothesis: odd shapes (b not a multiple of the block
or of M), ill-conditioned, rank-deficient and indefinite Hessians, dead
inputs, every method x pattern x alpha, edge sparsities.  In float64 the masks
must be identical, the damping identical, and the weights equal within

    |W_fast - W_ref| <= 1e-14 * kappa * max|W|,

kappa = cond(damped H).  Both sides are backward-stable solves of the same
SPD systems (reference: on H; fast: through U, H^{-1} = U^T U), so their
difference is O(eps * kappa * |W|); measured over ~2000 random layers the
largest ratio |dW| / (eps * kappa * max|W|) was below 0.1, so the bound
above (~45 eps * kappa) leaves a wide margin without hiding a wrong formula
(a wrong update is off by O(|W|)).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thanos_rs import HessianError, prune_layer
from thanos_rs import spec as S
from thanos_rs import torch_kernels

FAST_BACKENDS = ["torch", "rust"]
METHODS = ["thanos", "sparsegpt", "wanda", "magnitude"]
PATTERN_M = {"unstructured": 1, "structured": 1, "2:4": 4, "1:4": 4, "2:8": 8}
HESSIANS = ["plain", "ill", "rank", "indefinite"]
RTOL_PER_KAPPA = 1e-14

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: no oversubscription


def make_hessian(rng: np.random.Generator, b: int, kind: str, dead: np.ndarray) -> np.ndarray:
    """H = 2 X X^T / a of a chosen kind; `dead` inputs get zero rows and columns.

    plain: a = 3b tokens with uneven input scales; ill: eigenvalues spanning
    1e-6..1; rank: fewer tokens than inputs; indefinite: rank-deficient minus
    2% of its diagonal, so damping must be retried (or fail, for both sides).
    """
    if kind == "ill":
        q, _ = np.linalg.qr(rng.standard_normal((b, b)))
        h = 2 * (q * np.logspace(-6, 0, b)) @ q.T
        h = (h + h.T) / 2
    else:
        a = int(rng.integers(1, b)) if kind in ("rank", "indefinite") else 3 * b
        x = rng.standard_normal((b, a)) * np.exp(rng.standard_normal((b, 1)))
        h = 2 * x @ x.T / a
        if kind == "indefinite":
            h -= 0.02 * np.diag(np.diag(h))
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    return h


def damped_condition(h: np.ndarray, damp: float) -> float:
    """cond() of H after the dead-input fix and the damping the backends used."""
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    return float(np.linalg.cond(h + damp * np.mean(np.diag(h)) * np.eye(len(h))))


@st.composite
def jobs(draw):
    method = draw(st.sampled_from(METHODS))
    pattern = draw(st.sampled_from(list(PATTERN_M)))
    m = PATTERN_M[pattern]
    c = draw(st.integers(1, 24))
    b = m * draw(st.integers(-(-4 // m), 40 // m))  # 4..40, a multiple of M for N:M
    alpha = draw(st.sampled_from([0.0, 0.25])) if method == "thanos" and pattern != "unstructured" else 0.0
    sparsity = draw(st.one_of(st.sampled_from([0.0, 1 / (c * b), 0.5, 0.9, 1.0]), st.floats(0.0, 1.0)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dead = rng.choice(b, draw(st.integers(0, b // 2)), replace=False)
    h = make_hessian(rng, b, draw(st.sampled_from(HESSIANS)), dead)
    w = rng.standard_normal((c, b)) * np.exp(rng.standard_normal(b))
    kwargs = dict(
        method=method,
        pattern=pattern,
        sparsity=sparsity,
        alpha=alpha,
        block_size=draw(st.integers(1, 16)),
        damp=draw(st.sampled_from([0.01, 1e-4])),
    )
    return w, h, kwargs


def assert_matches_reference(w, h, kwargs, backend):
    try:
        ref = prune_layer(w, h, backend="reference", **kwargs)
    except HessianError:  # damping retries exhausted: the fast backend must say so too
        with pytest.raises(HessianError):
            prune_layer(w, h, backend=backend, **kwargs)
        return
    out = prune_layer(w, h, backend=backend, **kwargs)
    np.testing.assert_array_equal(out.mask, ref.mask)
    assert out.damp == ref.damp
    if kwargs["method"] in ("wanda", "magnitude"):  # no update: the kept weights are copied, bit for bit
        np.testing.assert_array_equal(out.weight, ref.weight)
    else:
        scale = max(float(np.abs(w).max()), 1e-300)
        tol = RTOL_PER_KAPPA * damped_condition(h, ref.damp) * scale
        np.testing.assert_allclose(out.weight, ref.weight, rtol=0, atol=tol)
    np.testing.assert_array_equal(out.weight[out.mask], 0.0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(deadline=None, max_examples=800)
@given(job=jobs())
def test_float64_matches_reference(backend, job):
    assert_matches_reference(*job, backend)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "structured"])
def test_every_method_and_pattern_once(backend, method, pattern):
    """A fixed, moderately sized case per combination, so none is left to chance."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((20, 36))
    h = make_hessian(rng, 36, "plain", np.array([5]))
    alpha = 0.25 if method == "thanos" and pattern != "unstructured" else 0.0
    kwargs = dict(method=method, pattern=pattern, sparsity=0.6, alpha=alpha, block_size=8, damp=0.01)
    assert_matches_reference(w, h, kwargs, backend)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "structured"])
def test_ties_break_like_the_reference(backend, method, pattern):
    """Weights on a coarse grid tie everywhere; one block, so every side sees the input W.

    Selections must then follow (score, row, column) or (score, column) exactly.
    """
    rng = np.random.default_rng(3)
    w = rng.integers(-3, 4, size=(12, 16)).astype(np.float64)
    h = np.diag(rng.integers(1, 3, size=16).astype(np.float64))  # diagonal: scores tie too
    alpha = 0.25 if method == "thanos" and pattern != "unstructured" else 0.0
    kwargs = dict(method=method, pattern=pattern, sparsity=0.5, alpha=alpha, block_size=16, damp=0.01)
    assert_matches_reference(w, h, kwargs, backend)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "structured"])
def test_float32_close_to_reference(backend, method, pattern):
    """64 x 96 float32 layer with a well-conditioned H (cond ~ 10): same masks, close weights.

    The fixed seed makes this deterministic; masks are compared exactly because
    float32 round-off (~1e-6 relative) is far below the score gaps at the
    selection boundaries of this layer.  Weights: 1e-4 * max|W| (float32
    eps * kappa * the number of blocks, with margin).
    """
    rng = np.random.default_rng(11)
    x = rng.standard_normal((96, 400))
    h = (2 * x @ x.T / 400).astype(np.float32)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    alpha = 0.25 if method == "thanos" and pattern != "unstructured" else 0.0
    kwargs = dict(method=method, pattern=pattern, sparsity=0.5, alpha=alpha, block_size=32, damp=0.01)
    ref = prune_layer(w.astype(np.float64), h.astype(np.float64), backend="reference", **kwargs)
    out = prune_layer(torch.from_numpy(w), torch.from_numpy(h), backend=backend, **kwargs)
    assert out.weight.dtype == torch.float32
    np.testing.assert_array_equal(out.mask.numpy(), ref.mask)
    np.testing.assert_allclose(out.weight.numpy(), ref.weight, rtol=0, atol=1e-4 * np.abs(w).max())
    assert out.loss == pytest.approx(ref.loss, rel=1e-3, abs=1e-7)


@pytest.mark.parametrize(("pattern", "alpha"), [("unstructured", 0.0), ("2:4", 0.0), ("2:4", 0.25)])
def test_as_published_is_the_same_algorithm(pattern, alpha):
    """Re-inverting H[i1:, i1:] every block (the paper's code) gives what U gives."""
    rng = np.random.default_rng(5)
    w = torch.from_numpy(rng.standard_normal((10, 40)))
    h = torch.from_numpy(make_hessian(rng, 40, "plain", np.array([3])))
    sp = S.make_spec("thanos", pattern, 0.5, alpha, 12, 0.01)
    w_fast, mask_fast, damp_fast = torch_kernels.prune(w.clone(), h.clone(), sp)
    w_pub, mask_pub, damp_pub = torch_kernels.prune_as_published(w.clone(), h.clone(), sp)
    assert torch.equal(mask_fast, mask_pub) and damp_fast == damp_pub
    torch.testing.assert_close(w_pub, w_fast, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wide_layers_agree_with_torch(dtype, pattern):
    """b > 1024: the Rust update runs in 256 KiB pieces of 128-row panels (512 columns in float32,
    256 in float64; the tally of the next selection on each piece, a short last piece, a ragged
    6-row last panel); the torch backend does not.

    float64: same masks, weights equal to 1e-10 * max|W| (cond(H) ~ 10). float32: near-ties may
    flip, so a few masked entries may differ and the losses agree to 1e-3.
    """
    rng = np.random.default_rng(13)
    c, b = 134, 1100
    x = rng.standard_normal((b, 3 * b))
    h = (2 * x @ x.T / (3 * b)).astype(dtype)
    w = (rng.standard_normal((c, b)) * np.exp(rng.standard_normal(b))).astype(dtype)
    kwargs = dict(method="thanos", pattern=pattern, sparsity=0.5, block_size=32, damp=0.01)
    rust = prune_layer(torch.from_numpy(w), torch.from_numpy(h), backend="rust", **kwargs)
    ref = prune_layer(torch.from_numpy(w), torch.from_numpy(h), backend="torch", **kwargs)
    assert int(rust.mask.sum()) == int(ref.mask.sum()) == c * b // 2
    if dtype == np.float64:
        assert torch.equal(rust.mask, ref.mask)
        torch.testing.assert_close(rust.weight, ref.weight, rtol=0, atol=1e-10 * np.abs(w).max())
    else:
        assert int((rust.mask != ref.mask).sum()) <= c * b // 1000
        assert rust.loss == pytest.approx(ref.loss, rel=1e-3)
