"""The Hessian accumulator: the running mean of ALGORITHM.md, over every token position."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from thanos_rs.errors import InputError
from thanos_rs.hessian import HessianAccumulator


def test_running_mean_equals_the_batch_formula():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(k, 7, 6, generator=gen, dtype=torch.float64) for k in (3, 1, 5)]
    acc = HessianAccumulator(6, dtype="float64")
    for x in batches:
        acc.add(x)
    tokens = torch.cat([x.reshape(-1, 6) for x in batches])  # every position of every sequence
    expected = 2.0 / tokens.shape[0] * tokens.T @ tokens
    assert acc.tokens == 9 * 7
    torch.testing.assert_close(acc.hessian, expected, rtol=1e-12, atol=1e-12)


def test_float32_by_default_and_stable_over_many_batches():
    acc = HessianAccumulator(4)
    x = torch.ones(10, 4)
    for _ in range(1000):
        acc.add(x)
    assert acc.hessian.dtype == torch.float32
    torch.testing.assert_close(acc.hessian, torch.full((4, 4), 2.0), rtol=1e-4, atol=0)  # a mean: no growth


def test_hook_feeds_the_layer_input():
    layer = nn.Linear(5, 3)
    acc = HessianAccumulator(5, dtype="float64")
    handle = acc.hook(layer)
    x = torch.randn(2, 4, 5)
    layer(x)
    handle.remove()
    layer(torch.randn(2, 5))  # removed: no longer counted
    flat = x.reshape(-1, 5).double()
    torch.testing.assert_close(acc.hessian, 2.0 / 8 * flat.T @ flat)


def test_unknown_dtype():
    with pytest.raises(InputError, match="float32' or 'float64"):
        HessianAccumulator(3, dtype="float16")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_triangle_on_the_cpu_equals_addmm(dtype):
    """The CPU path (one triangle per batch in Rust, mirrored when read) against
    torch's full ``addmm``: reading in between and adding more batches included,
    and inputs that are not contiguous or not in the Hessian's dtype."""
    gen = torch.Generator().manual_seed(1)
    width = 150  # the mirror's tiles: two full, one partial
    acc = HessianAccumulator(width, dtype=dtype)
    want = torch.zeros(width, width, dtype=torch.float64)
    seen = 0
    for step, k in enumerate((17, 1, 40, 3)):
        x = torch.randn(width, k, generator=gen).T  # a transposed view: not contiguous
        acc.add(x)
        want = want * (seen / (seen + k)) + (2.0 / (seen + k)) * x.double().T @ x.double()
        seen += k
        if step == 1:
            torch.testing.assert_close(acc.hessian.double(), want, rtol=1e-5, atol=1e-5)
    got = acc.hessian
    assert got.dtype == getattr(torch, dtype)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, got.T)
