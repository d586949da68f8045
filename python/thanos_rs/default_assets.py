"""Paths of the model and text bundled with the package, for runs that name no model.

The default model is a small Llama trained by ``scripts/train_default_model.py`` on the
docstrings of the Python standard library; the text files are that script's calibration
subset and held-out split (see the README.md next to each). All three are package data,
so they resolve inside an installed wheel as well as in a source checkout.
"""

from __future__ import annotations

import pathlib
from importlib.resources import files


def _package_path(*parts: str) -> pathlib.Path:
    # The package is installed as plain files (never zipped), so the traversable is a real path.
    return pathlib.Path(str(files("thanos_rs").joinpath(*parts)))


def default_model_dir() -> pathlib.Path:
    """Directory of the bundled model, loadable with ``AutoModelForCausalLM.from_pretrained``
    and ``AutoTokenizer.from_pretrained`` (offline). Weights are float16 on disk; pass
    ``dtype=torch.float32`` to load them in full precision."""
    return _package_path("default_model")


def default_calibration_file() -> pathlib.Path:
    """Calibration text for the default model: training-split docstrings, each followed by a
    line holding only ``<|endoftext|>``."""
    return _package_path("default_data", "train.txt")


def default_eval_file() -> pathlib.Path:
    """Held-out docstrings (never trained on) for perplexity, in the same layout as
    :func:`default_calibration_file`."""
    return _package_path("default_data", "heldout.txt")
