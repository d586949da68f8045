"""The layer Hessian ``H = (2/n) sum_t x_t x_t^T``, accumulated as a running mean.

Exactly as ALGORITHM.md (and SparseGPT) does: after ``n`` tokens, a batch of
``k`` more gives ``H <- H*n/(n+k) + (2/(n+k)) X_k X_k^T``. ``n`` counts tokens
(every position of every sequence), so H does not grow with the amount of
calibration data and float32 keeps its precision however many batches come.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError

__all__ = ["HessianAccumulator", "HESSIAN_DTYPES"]

HESSIAN_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class HessianAccumulator:
    """Streams the inputs of one linear layer into its (b, b) Hessian.

    On the CPU each batch updates one triangle of H in the Rust core (X^T X is
    symmetric: half the work of torch's ``addmm``; with faer's kernel 3.4x faster in
    all on a batch of 4096 tokens x 5632 features, 1.19 -> 0.35 s on a 2-core VM);
    reading ``hessian`` copies it onto the other triangle once. Other devices use
    ``addmm``.
    """

    def __init__(self, width: int, device: torch.device | str = "cpu", dtype: str = "float32"):
        if dtype not in HESSIAN_DTYPES:
            raise InputError(f"hessian dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = HESSIAN_DTYPES[dtype]
        self._hessian = torch.zeros(width, width, dtype=self.dtype, device=device)
        self._one_triangle = False  # True while only the upper triangle is current
        self.tokens = 0

    @property
    def hessian(self) -> torch.Tensor:
        """The (b, b) running mean so far."""
        if self._one_triangle:
            from . import _core

            _core.mirror_hessian(self._hessian.numpy())
            self._one_triangle = False
        return self._hessian

    def add(self, x: torch.Tensor) -> None:
        """Fold in a batch of inputs ``x`` of shape (..., b): every leading index is a token."""
        x = x.detach().reshape(-1, x.shape[-1]).to(device=self._hessian.device, dtype=self.dtype)
        k = x.shape[0]
        if k == 0:
            return
        n = self.tokens
        keep, add = n / (n + k), 2.0 / (n + k)  # H <- H * n/(n+k) + (2/(n+k)) X^T X (rows of x are tokens)
        if self._hessian.device.type == "cpu":
            from . import _core

            _core.accumulate_hessian(self._hessian.numpy(), x.contiguous().numpy(), keep, add)
            self._one_triangle = True
        else:
            self._hessian.addmm_(x.T, x, beta=keep, alpha=add)
        self.tokens = n + k

    def hook(self, module: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Register on ``module`` so each forward call feeds its input here."""

        def before_forward(_module, args):
            self.add(args[0])

        return module.register_forward_pre_hook(before_forward)
