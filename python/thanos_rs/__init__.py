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
    "layer_loss",
    "prune_layer",
    "prune_model",
]

# The model pipeline pulls in transformers; load it only when asked for.
_LAZY = {"prune_model": "pipeline", "PruneConfig": "pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
