"""thanos-rs: one-shot post-training pruning of LLMs (Thanos, SparseGPT, Wanda, magnitude).

Layer level: :func:`prune_layer`.  Model level: :func:`prune_model` and the
``python -m thanos_rs.prune`` command.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .errors import DataError, HessianError, InputError, ModelError, ThanosError
from .kernels import LayerResult, layer_loss, prune_layer

try:
    __version__ = version("thanos-rs")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "DataError",
    "HessianError",
    "InputError",
    "LayerResult",
    "ModelError",
    "PruneConfig",
    "ThanosError",
    "compact_report",
    "export_structured",
    "layer_loss",
    "load_pretrained",
    "open_streamed",
    "prune_layer",
    "prune_model",
    "register",
    "save_compact",
    "shrink_mlp",
    "to_semi_structured",
]

# The model-level modules pull in transformers; load them only when asked for.
_LAZY = {
    "prune_model": "pipeline",
    "PruneConfig": "pipeline",
    "load_pretrained": "export",
    "open_streamed": "stream",
    "save_compact": "export",
    "register": "export",
    "compact_report": "export",
    "to_semi_structured": "sparse24",
    "shrink_mlp": "shrink",
    "export_structured": "shrink",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
