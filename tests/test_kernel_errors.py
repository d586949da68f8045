"""Bad input to prune_layer raises a thanos_rs error that says what to change.

Every case runs for each backend: validation is shared, but a backend must
never turn it into a bare RuntimeError, a LinAlgError or a panic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thanos_rs import HessianError, InputError, ThanosError, prune_layer

BACKENDS = ["torch", "rust", "reference"]
C, B = 6, 8

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: no oversubscription


def good_layer():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 32))
    return rng.standard_normal((C, B)), 2 * x @ x.T / 32


def with_weight_value(value):
    w, h = good_layer()
    w[2, 3] = value
    return w, h


def with_hessian_value(value):
    w, h = good_layer()
    h[1, 4] = h[4, 1] = value
    return w, h


def indefinite_hessian():
    """Diagonal 1, off-diagonal 100: eigenvalue -99 survives even the last damping (10 x mean)."""
    w, _ = good_layer()
    return w, np.full((B, B), 100.0) - 99.0 * np.eye(B)


def with_negative_diagonal():
    w, h = good_layer()
    h[0, 0] = -1.0
    return w, h


# (id, (w, h), prune_layer keyword arguments, expected class, a regex the message must match)
CASES = [
    ("nan-weight", with_weight_value(np.nan), {}, InputError, r"weight contains NaN or Inf.*fix"),
    ("inf-weight", with_weight_value(np.inf), {}, InputError, r"weight contains NaN or Inf.*fix"),
    ("nan-hessian", with_hessian_value(np.nan), {}, InputError, r"hessian contains NaN or Inf.*accumulate"),
    ("negative-diagonal", with_negative_diagonal(), {}, InputError, r"negative diagonal.*positive semi-definite"),
    ("shape-mismatch", (good_layer()[0], np.eye(B + 1)), {}, InputError, r"hessian must be \(b, b\) = \(8, 8\)"),
    ("transposed-weight", (good_layer()[0].T, good_layer()[1]), {}, InputError, r"hessian must be \(b, b\)"),
    ("1d-weight", (np.ones(B), np.eye(B)), {}, InputError, r"weight must be 2-D"),
    ("empty-weight", (np.ones((0, B)), np.eye(B)), {}, InputError, r"must not be empty"),
    ("int-weight-numpy", (np.ones((C, B), dtype=np.int32), np.eye(B)), {}, InputError, r"floating-point"),
    ("int-weight-torch", (torch.ones(C, B, dtype=torch.int64), np.eye(B)), {}, InputError, r"float16, bfloat16"),
    ("list-weight", ([[1.0] * B] * C, np.eye(B)), {}, InputError, r"torch tensor or numpy array"),
    ("sparsity-negative", good_layer(), {"sparsity": -0.1}, InputError, r"sparsity must be a fraction in \[0, 1\]"),
    ("sparsity-above-1", good_layer(), {"sparsity": 1.5}, InputError, r"sparsity must be a fraction in \[0, 1\]"),
    ("sparsity-percent", good_layer(), {"sparsity": 50}, InputError, r"did you mean 0\.5"),
    ("sparsity-nan", good_layer(), {"sparsity": float("nan")}, InputError, r"sparsity must be finite"),
    ("m-not-dividing", good_layer(), {"pattern": "2:3"}, InputError, r"multiple of 3.*whose M divides 8"),
    ("n-equals-m", good_layer(), {"pattern": "4:4"}, InputError, r"0 < N < M"),
    ("n-above-m", good_layer(), {"pattern": "5:4"}, InputError, r"0 < N < M"),
    ("pattern-not-numbers", good_layer(), {"pattern": "x:y"}, InputError, r"two integers like '2:4'"),
    ("unknown-pattern", good_layer(), {"pattern": "diagonal"}, InputError, r"use 'unstructured', 'structured'"),
    ("block-size-0", good_layer(), {"block_size": 0}, InputError, r"block_size must be a positive integer"),
    ("block-size-float", good_layer(), {"block_size": 2.5}, InputError, r"block_size must be a positive integer"),
    ("unknown-method", good_layer(), {"method": "obs"}, InputError, r"choose one of thanos, sparsegpt"),
    ("alpha-with-wanda", good_layer(), {"method": "wanda", "pattern": "2:4", "alpha": 0.1}, InputError, r"needs alpha=0"),
    ("alpha-unstructured", good_layer(), {"alpha": 0.1}, InputError, r"use alpha=0 for unstructured"),
    ("alpha-1", good_layer(), {"pattern": "2:4", "alpha": 1.0}, InputError, r"alpha .* must be in \[0, 1\)"),
    ("damp-0", good_layer(), {"damp": 0.0}, InputError, r"damp must be > 0.*e\.g\. 0\.01"),
    ("damp-negative", good_layer(), {"damp": -0.01}, InputError, r"damp must be > 0"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("layer", "kwargs", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_says_what_to_change(backend, layer, kwargs, error, message):
    w, h = layer
    with pytest.raises(error, match=message) as info:
        prune_layer(w, h, backend=backend, **kwargs)
    assert isinstance(info.value, ThanosError)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["thanos", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "structured"])
def test_indefinite_hessian_fails_after_the_damping_retries(backend, method, pattern):
    w, h = indefinite_hessian()
    with pytest.raises(HessianError, match=r"not positive definite even with damping .*pass a larger damp") as info:
        prune_layer(w, h, method, pattern, backend=backend)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_indefinite_hessian_is_fine_without_an_update(backend):
    """Wanda and magnitude read only diag(H): they never factorise it."""
    w, h = indefinite_hessian()
    assert prune_layer(w, h, "wanda", backend=backend).damp == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("at", [(0, 0), (3, 4), (C - 1, B - 1)])
def test_any_non_finite_weight_is_found(dtype, value, at):
    """The finiteness check (a min/max reduction) sees every kind of bad value anywhere."""
    w, h = good_layer()
    w = torch.tensor(w, dtype=dtype)
    w[at] = value
    with pytest.raises(InputError, match=r"weight contains NaN or Inf"):
        prune_layer(w, torch.tensor(h, dtype=torch.float32), backend="torch")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finiteness_check_in_every_float_type(dtype):
    """The check itself, on the dtypes it is handed (prune_layer casts its inputs first)."""
    from thanos_rs.kernels import _all_finite

    x = torch.randn(5, 7).to(dtype)
    assert _all_finite(x)
    for value in (float("nan"), float("inf"), -float("inf")):
        for at in ((0, 0), (2, 3), (4, 6)):
            y = x.clone()
            y[at] = value
            assert not _all_finite(y), (value, at)


def test_unknown_backend():
    w, h = good_layer()
    with pytest.raises(InputError, match=r"unknown backend 'cuda'.*choose one of auto, rust, torch"):
        prune_layer(w, h, backend="cuda")


def test_fp16_overflow_is_an_error_not_inf_weights():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 16)) * np.logspace(0, 3, 64)[:, None]
    h = torch.tensor(2 * x @ x.T / 16, dtype=torch.float32)
    w = torch.tensor(rng.standard_normal((64, 64)) * 100, dtype=torch.float16)
    with pytest.raises(HessianError, match="non-finite weights"):
        prune_layer(w, h, "thanos", "2:4", block_size=32, damp=1e-8, backend="rust")


def test_negative_zero_diagonal_is_a_dead_input_in_every_backend():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 32))
    h = 2 * x @ x.T / 32
    h[3, :] = h[:, 3] = 0.0
    h[3, 3] = -0.0
    w = rng.standard_normal((4, 8))
    masks = [prune_layer(w, h, m, "unstructured", 0.25, backend=be).mask
             for m in ("wanda", "thanos") for be in ("reference", "rust", "torch")]
    assert all(mask[:, 3].all() for mask in masks)
