"""N:M weights as kept values plus positions, and 2:4 linears on the GPU's sparse tensor cores.

Two uses of one codec:

* :mod:`thanos_rs.export` stores an N:M layer as its kept values (``m - n`` per
  group of ``m`` inputs) and their positions in the group, bit-packed
  (``ceil(log2 m)`` bits each: 2 bits per kept value for 2:4);
* :func:`to_semi_structured` swaps 2:4-pruned linears for
  ``torch.sparse.to_sparse_semi_structured`` weights (CUDA only).

Thanos with ``alpha > 0`` keeps a few rows dense, so the layer is not 2:4 as a
whole. :class:`OutlierSplitLinear` makes it hardware-valid without reordering
rows: the 2:4 matrix has all ``c`` rows (an outlier row contributes the
``m - n`` largest weights of each group), and the rest of every outlier row is
a small dense ``k x b`` matmul added into those ``k`` outputs with one
``index_add_``. The two parts partition each outlier row's entries, so
``sparse + residual == W`` exactly; the row count stays ``c`` (no padding to the
kernels' row alignment), and the big output is never scattered.

A weight counts as zero only if its bits are +0.0: -0.0 would not survive a
drop-and-refill round trip bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, ThanosError
from .model import decoder_linears, replace_module, weight_matrix

__all__ = [
    "OutlierSplitLinear",
    "nm_compress",
    "nm_decompress",
    "nm_rows",
    "pack_codes",
    "split_outliers",
    "to_semi_structured",
    "unpack_codes",
    "zero_bits",
]

_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}
HALF_DTYPES = (torch.float16, torch.bfloat16)
DEFAULT_MAX_OUTLIER_ROWS = 0.5  # beyond this a "2:4 layer with outliers" is mostly dense


def zero_bits(w: torch.Tensor) -> torch.Tensor:
    """Bool tensor: True where ``w`` is exactly +0.0 (its bit pattern is all zeros)."""
    if w.dtype not in _INT_VIEW:
        raise InputError(f"expected a float16/bfloat16/float32/float64 weight, got {w.dtype}")
    return w.view(_INT_VIEW[w.dtype]) == 0


def nm_rows(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool per row of ``w`` (c x b): every group of ``m`` consecutive inputs has >= ``n`` zeros."""
    c, b = w.shape
    if b % m:
        return torch.zeros(c, dtype=torch.bool, device=w.device)
    return (zero_bits(w).view(c, b // m, m).sum(-1) >= n).all(-1)


def nm_compress(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept values ``(c, b/m*(m-n))`` and their in-group positions ``(c, b/m, m-n)``, ascending.

    Every row must satisfy :func:`nm_rows`. Non-zeros are kept first, then the
    lowest-position zeros to fill a group that has more than ``n`` zeros, so
    everything dropped is +0.0.
    """
    c, b = w.shape
    groups = w.reshape(c, b // m, m)
    key = zero_bits(groups).to(torch.int64) * m + torch.arange(m, device=w.device)
    keep = key.argsort(-1)[..., : m - n].sort(-1).values
    return groups.gather(-1, keep).reshape(c, -1), keep.to(torch.uint8)


def nm_decompress(values: torch.Tensor, positions: torch.Tensor, n: int, m: int, b: int) -> torch.Tensor:
    """Inverse of :func:`nm_compress`: the ``(c, b)`` weight with +0.0 at the dropped positions."""
    c = values.shape[0]
    groups = values.new_zeros(c, b // m, m)
    groups.scatter_(-1, positions.to(torch.int64), values.reshape(c, b // m, m - n))
    return groups.reshape(c, b)


def code_bits(m: int) -> int:
    """Bits per in-group position: 2 for m = 4, 3 for m = 8."""
    return max(1, math.ceil(math.log2(m)))


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Small non-negative integers (< 2**bits) packed ``bits`` each into a flat uint8 tensor."""
    flat = codes.reshape(-1, 1).to(torch.uint8).cpu()
    planes = (flat >> torch.arange(bits, dtype=torch.uint8)) & 1
    return torch.from_numpy(np.packbits(planes.numpy().reshape(-1), bitorder="little"))


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` int64 codes."""
    planes = np.unpackbits(packed.cpu().numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    return torch.from_numpy((planes.astype(np.int64) << np.arange(bits)).sum(1))


class OutlierSplitLinear(nn.Module):
    """``y = x W^T + bias`` with W = ``sparse_weight`` (all rows, N:M) + the outlier rows' dense residual.

    ``sparse_weight`` is either a dense tensor (CPU, tests) or a
    ``to_sparse_semi_structured`` tensor (CUDA); ``outlier_rows`` may be empty.
    """

    def __init__(self, sparse_weight: torch.Tensor, bias: torch.Tensor | None, outlier_rows: torch.Tensor,
                 outlier_residual: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = sparse_weight.shape
        self.sparse_weight = nn.Parameter(sparse_weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("outlier_rows", outlier_rows)
        self.outlier_residual = nn.Parameter(outlier_residual, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.sparse_weight, self.bias)
        if self.outlier_rows.numel():
            y.index_add_(-1, self.outlier_rows, F.linear(x, self.outlier_residual))
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"outlier_rows={self.outlier_rows.numel()}, bias={self.bias is not None}")


def split_outliers(name: str, module: nn.Module, n: int = 2, m: int = 4,
                   max_outlier_rows: float = DEFAULT_MAX_OUTLIER_ROWS) -> OutlierSplitLinear:
    """An :class:`OutlierSplitLinear` with dense weights computing exactly what ``module`` computes.

    Raises ThanosError naming ``name`` when more than ``max_outlier_rows`` of
    the rows are not N:M (the layer was not N:M-pruned).
    """
    w = weight_matrix(module).detach()
    b = w.shape[1]
    outliers = _outlier_rows(name, w, n, m, max_outlier_rows)
    sparse = w.clone()
    dense_rows = sparse[outliers].reshape(-1, b // m, m)
    # Outlier rows: the m-n largest |w| per group go to the N:M part, the rest to the residual.
    drop = dense_rows.abs().argsort(-1)[..., :n]
    sparse[outliers] = dense_rows.scatter(-1, drop, 0.0).reshape(-1, b)
    residual = (w[outliers] - sparse[outliers]).contiguous()  # exact: each entry is w or 0
    bias = None if module.bias is None else module.bias.detach().clone()
    return OutlierSplitLinear(sparse.contiguous(), bias, outliers, residual)


def _outlier_rows(name: str, w: torch.Tensor, n: int, m: int, max_outlier_rows: float) -> torch.Tensor:
    c, b = w.shape
    if b % m:
        raise ThanosError(f"layer {name} has {b} inputs, not a multiple of {m}: it cannot be {n}:{m} sparse")
    outliers = (~nm_rows(w, n, m)).nonzero().flatten()
    if outliers.numel() > max_outlier_rows * c:
        raise ThanosError(
            f"layer {name} is not {n}:{m} sparse: {outliers.numel()} of its {c} rows have a group of {m} inputs "
            f"with fewer than {n} zeros (at most {max_outlier_rows:.0%} outlier rows allowed); prune it with "
            f"pattern '{n}:{m}' first"
        )
    return outliers


def to_semi_structured(model: nn.Module, max_outlier_rows: float = DEFAULT_MAX_OUTLIER_ROWS) -> dict[str, int]:
    """Swap every 2:4 decoder linear for an :class:`OutlierSplitLinear` on 2:4 sparse tensor cores.

    Needs CUDA and float16/bfloat16 weights on the GPU. Every layer's dtype,
    device and 2:4 pattern is checked before any is swapped, so a bad layer
    leaves the model unchanged; layers are then converted one at a time (one
    layer of extra GPU memory). Returns layer name -> number of outlier rows.
    """
    if not torch.cuda.is_available():
        raise ThanosError("to_semi_structured needs a CUDA GPU (torch.sparse.to_sparse_semi_structured is CUDA-only); "
                          "on CPU use split_outliers for a dense equivalent")
    layers = decoder_linears(model)
    for name, module in layers.items():
        _check_gpu_half(name, module)
        _outlier_rows(name, module.weight.detach(), 2, 4, max_outlier_rows)
    outliers = {}
    for name, module in layers.items():
        split = split_outliers(name, module, 2, 4, max_outlier_rows)
        try:
            split.sparse_weight = nn.Parameter(
                torch.sparse.to_sparse_semi_structured(split.sparse_weight.data), requires_grad=False)
        except RuntimeError as e:  # a shape the sparse kernels do not support
            raise ThanosError(f"layer {name}: torch cannot make it 2:4 semi-structured ({e}); the layers before it "
                              "are converted already and compute the same function as before") from None
        replace_module(model, name, split)
        outliers[name] = split.outlier_rows.numel()
    return outliers


def _check_gpu_half(name: str, module: nn.Module) -> None:
    if not isinstance(module, nn.Linear):
        raise ThanosError(f"layer {name} is a {type(module).__name__}; 2:4 conversion supports nn.Linear only")
    w = module.weight
    if not w.is_cuda or w.dtype not in HALF_DTYPES:
        raise ThanosError(f"layer {name} is {w.dtype} on {w.device}; 2:4 sparse kernels need float16 or bfloat16 "
                          "on CUDA: call model.to('cuda', torch.float16) first")
