"""Structured pruning that really shrinks: narrower matmuls, and a smaller ``intermediate_size``.

A structured-pruned layer (ALGORITHM.md, "Thanos, structured") has a set S of
input columns that are zero in every non-outlier row. Two ways to cash that in:

* :func:`export_structured` replaces each such linear in place by a
  :class:`GatherLinear` (no outlier rows: ``index_select`` the kept inputs, then
  a plain narrower ``nn.Linear``) or a :class:`RowSplitLinear` (outlier rows:
  the same, plus the outlier rows' weights on the removed inputs, added into
  their ``k`` outputs with one ``index_add_``). That is "outlier rows x all
  inputs, other rows x kept inputs" in the same flops, with the big output
  written in place instead of scattered. For inference only: the model's
  state-dict keys change.
* :func:`shrink_mlp` removes the intermediate channels of gated MLPs
  (``down(act(gate x) * up x)``) whose ``down`` column is zero in every row
  (structured pruning of ``down`` with alpha = 0): gate and up lose those rows,
  down those columns, and the config's ``intermediate_size`` shrinks, so the
  result is a standard transformers model (``save_pretrained`` /
  ``from_pretrained`` as usual). Call it before :func:`export_structured`.

Outputs match the pruned dense layers up to float summation order (fewer terms
are added, in a different order): about 1e-6 relative in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError, ThanosError
from .model import decoder_linears, replace_module, weight_matrix

__all__ = ["GatherLinear", "RowSplitLinear", "export_structured", "gated_mlps", "shrink_mlp", "split_structured"]


class GatherLinear(nn.Module):
    """``y = linear(x[..., kept])``: a structured-pruned layer without outlier rows."""

    def __init__(self, in_features: int, kept: torch.Tensor, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = in_features, linear.out_features
        self.register_buffer("kept", kept)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.index_select(-1, self.kept))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, kept={self.kept.numel()}, out_features={self.out_features}"


class RowSplitLinear(GatherLinear):
    """:class:`GatherLinear` plus the outlier rows' weights on the removed inputs."""

    def __init__(self, in_features: int, kept: torch.Tensor, linear: nn.Linear, outlier_rows: torch.Tensor,
                 removed: torch.Tensor, outlier_weight: torch.Tensor):
        super().__init__(in_features, kept, linear)
        self.register_buffer("outlier_rows", outlier_rows)
        self.register_buffer("removed", removed)
        self.outlier_weight = nn.Parameter(outlier_weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        y.index_add_(-1, self.outlier_rows, F.linear(x.index_select(-1, self.removed), self.outlier_weight))
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, outlier_rows={self.outlier_rows.numel()}"


def split_structured(name: str, module: nn.Module) -> GatherLinear:
    """The exported form of one structured-pruned linear (nn.Linear or Conv1D); ThanosError if it is not one.

    Removed columns S: zero in more than half of the rows. Non-outlier rows: zero
    on all of S (Thanos keeps fewer than half the rows as outliers). Outlier rows
    only need the columns of S where one of them is non-zero.
    """
    w = weight_matrix(module).detach()
    c, b = w.shape
    zeros = w == 0
    removed = zeros.sum(0) * 2 > c
    outliers = ~zeros[:, removed].all(1)
    if not removed.any() or outliers.sum() * 2 >= c:
        raise ThanosError(f"layer {name} is not structured-pruned: no input columns are zero in most of its rows")
    kept = (~removed).nonzero().flatten()
    linear = nn.Linear(kept.numel(), c, bias=module.bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        linear.weight.copy_(w[:, kept])
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    if not outliers.any():
        return GatherLinear(b, kept, linear)
    rows = outliers.nonzero().flatten()
    needed = (removed & ~zeros[rows].all(0)).nonzero().flatten()
    return RowSplitLinear(b, kept, linear, rows, needed, w[rows][:, needed].contiguous())


def export_structured(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Replace every structured-pruned decoder linear in place; returns name -> (kept inputs, outlier rows).

    Other linears (dense, unstructured, N:M, already shrunk) are left alone;
    ThanosError if there is none to export.
    """
    exported = {}
    for name, module in decoder_linears(model).items():
        try:
            new = split_structured(name, module)
        except ThanosError:
            continue
        replace_module(model, name, new)
        outliers = new.outlier_rows.numel() if isinstance(new, RowSplitLinear) else 0
        exported[name] = (new.kept.numel(), outliers)
    if not exported:
        raise ThanosError("no structured-pruned linear found: prune with pattern 'structured' first")
    return exported


# Names of the down projection, used only when shapes cannot tell (hidden == intermediate).
DOWN_NAMES = ("down_proj", "w2", "fc2", "dense_4h_to_h")


def gated_mlps(model: nn.Module) -> dict[str, tuple[str, str, str]]:
    """Modules holding exactly three direct nn.Linear children: two (I x h) producers and one (h x I) down.

    Found by shape: module name -> (producer, producer, down) child names. A square MLP
    (I == h) fits every choice of down; then the down projection's conventional name
    decides, and a module without one is left out. Attention blocks never match (q, k,
    v, o are four linears).
    """
    found = {}
    for name, module in model.named_modules():
        linears = {n: c for n, c in module.named_children() if isinstance(c, nn.Linear)}
        if len(linears) != 3:
            continue
        fits = {}
        for down, d in linears.items():
            producers = [n for n, c in linears.items() if n != down
                         and (c.out_features, c.in_features) == (d.in_features, d.out_features)]
            if len(producers) == 2:
                fits[down] = producers
        if len(fits) > 1:
            fits = {down: p for down, p in fits.items() if down in DOWN_NAMES}
        if len(fits) == 1:
            (down, producers), = fits.items()
            found[name] = (*producers, down)
    return found


def check_shrinkable(model: nn.Module) -> dict[str, tuple[str, str, str]]:
    """The gated MLPs shrink_mlp would change; a ModelError if there is nothing it can shrink."""
    mlps = gated_mlps(model)
    if not mlps:
        raise ModelError(f"{type(model).__name__} has no gated MLP of three nn.Linear layers (gate, up, down); "
                         "shrink_mlp supports Llama-family MLPs and must run before export_structured")
    config = model.config.get_text_config() if hasattr(model, "config") else None
    if not isinstance(getattr(config, "intermediate_size", None), int):
        raise ModelError(f"{type(model).__name__}'s config has no integer intermediate_size to shrink")
    return mlps


def shrink_mlp(model: nn.Module) -> dict[str, int]:
    """Drop the intermediate channels whose ``down`` column is all zero; returns MLP name -> channels needed.

    Every MLP gets the same new ``intermediate_size`` (a standard config has one
    number): the largest needed; MLPs that need fewer keep some of their
    all-zero channels as padding (they add exact zeros). Updates the config.
    """
    mlps = check_shrinkable(model)
    config = model.config.get_text_config()
    live = {name: _live_channels(model.get_submodule(name), names[2]) for name, names in mlps.items()}
    size = max(int(channels.sum()) for channels in live.values())
    for name, (first, second, down) in mlps.items():
        mlp = model.get_submodule(name)
        keep = _pad_to(live[name], size)
        for producer in (first, second):
            setattr(mlp, producer, _take(getattr(mlp, producer), rows=keep))
        setattr(mlp, down, _take(getattr(mlp, down), cols=keep))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = size
    config.intermediate_size = size
    return {name: int(channels.sum()) for name, channels in live.items()}


def _live_channels(mlp: nn.Module, down: str) -> torch.Tensor:
    return (getattr(mlp, down).weight.detach() != 0).any(0)


def _pad_to(live: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the live channels plus the first dead ones up to ``size``, ascending."""
    dead = (~live).nonzero().flatten()
    return torch.cat([live.nonzero().flatten(), dead[: size - int(live.sum())]]).sort().values


def _take(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        w, bias = w[rows], (None if bias is None else bias[rows])
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias)
    return new
