"""Compact sparse checkpoints: pruned linear weights stored as what is left of them.

:func:`save_compact` writes a Hugging Face directory (config, generation config,
tokenizer, safetensors) in which every decoder linear weight takes the smallest
of three encodings, chosen per weight from its bits:

* ``nm``: rows whose every group of ``m`` consecutive inputs has >= ``n`` zeros
  keep ``m - n`` values per group plus their in-group positions, bit-packed
  (2 bits per kept value for 2:4: 0.5625x the dense bytes). Rows that are not
  N:M (Thanos outlier rows) are stored dense beside them, with a 1-bit-per-row mask;
* ``bitmask``: one bit per weight (``np.packbits``) plus the non-zero values;
* ``dense``: the tensor as is.

Everything else (embeddings, norms, lm_head) stays dense. ``config.json``
records the encodings under ``"thanos_rs_compact": {"version": 1, "layers":
{...}}``; compact tensors are named ``<weight key>:<part>``. The weights file is
``thanos_compact.safetensors`` (not ``model.safetensors``) on purpose: a plain
``from_pretrained`` then fails loudly ("no file named model.safetensors")
instead of silently initialising the missing linear weights at random.

Loading: :func:`load_pretrained`, or :func:`register` once, after which every
transformers ``from_pretrained`` reads compact directories too. A true
zero-code path does not exist: safetensors has no sparse type, and the only
transformers 5 extension point that rewrites weights at load time (a registered
``HfQuantizer`` with its weight-conversion ops) depends on internal loader APIs
that change between 5.x releases, marks the model as quantized, and without the
registration loads random weights with only a warning. Both loaders here use the
public, long-stable ``from_pretrained(None, config=..., state_dict=...)``; the
weights come back bit-identical (+0.0 counts as zero, -0.0 is kept as a value).
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ModelError
from .model import Conv1D, decoder_linears, write_dir_atomically
from .sparse24 import code_bits, nm_compress, nm_decompress, pack_codes, unpack_codes, zero_bits

__all__ = ["CompactReport", "compact_report", "decompress_state_dict", "load_pretrained", "register", "save_compact",
           "write_compact"]

FORMAT_KEY = "thanos_rs_compact"
VERSION = 1
WEIGHTS_NAME = "thanos_compact.safetensors"
INDEX_NAME = f"{WEIGHTS_NAME}.index.json"
NM_GROUPS = (4, 8, 16)  # m values tried; n is read off the weight


# ---------------------------------------------------------------- saving


def save_compact(model: nn.Module, tokenizer, out_dir: str | os.PathLike, overwrite: bool = False,
                 max_shard_size: int | str = "50GB") -> Path:
    """Write ``model`` (and ``tokenizer``, if given) as a compact directory, atomically.

    The directory is built beside ``out_dir`` and renamed into place, so a
    failure leaves no partial output. A non-empty ``out_dir`` is refused unless
    ``overwrite``. A dense model is fine: its linears are all stored dense.
    ``max_shard_size`` goes to ``save_pretrained`` (sizes are before compaction).
    """
    return write_dir_atomically(out_dir, overwrite, lambda tmp: write_compact(model, tokenizer, tmp, max_shard_size))


def write_compact(model: nn.Module, tokenizer, directory: Path, max_shard_size: int | str = "50GB") -> None:
    """The body of :func:`save_compact`: write the compact files into an existing directory."""
    linear_keys = {f"{name}.weight": isinstance(module, Conv1D) for name, module in decoder_linears(model).items()}
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    layers = _compact_weight_files(directory, linear_keys)
    _add_to_config(directory / "config.json", {"version": VERSION, "layers": layers})


def _compact_weight_files(folder: Path, linear_keys: dict[str, bool]) -> dict[str, dict]:
    """Rewrite transformers' safetensors shards with compact linears; returns the per-weight encodings."""
    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    layers: dict[str, dict] = {}
    weight_map: dict[str, str] = {}
    for shard in shards:
        tensors = load_file(folder / shard)
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            if key not in linear_keys:
                out[key] = tensor
                continue
            transposed = linear_keys[key]
            layers[key], parts = encode(tensor.T.contiguous() if transposed else tensor)
            layers[key]["transposed"] = transposed
            out.update({f"{key}:{part}": t for part, t in parts.items()} if parts else {key: tensor})
        name = shard.replace("model", WEIGHTS_NAME.removesuffix(".safetensors"), 1)
        save_file(out, folder / name, metadata={"format": "pt"})
        (folder / shard).unlink()
        weight_map.update(dict.fromkeys(out, name))
    if index.exists():
        index.unlink()
        (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return layers


def encode(w: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
    """The cheapest encoding of a (c x b) weight: (metadata, tensors by part name; empty when dense)."""
    c, b = w.shape
    meta = {"format": "dense", "shape": [c, b], "dtype": str(w.dtype).removeprefix("torch.")}
    if w.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return meta, {}
    zeros = zero_bits(w)
    size = w.element_size()
    # (bytes, preference, plan): on a tie N:M wins (at 2:4 its 2-bit positions cost exactly what a
    # 1-bit-per-weight mask does, and its fixed-size rows map onto the 2:4 hardware layout), then bitmask.
    options = [(c * b * size, 2, {}), (math.ceil(c * b / 8) + int((~zeros).sum()) * size, 1, {"format": "bitmask"})]
    for m in (m for m in NM_GROUPS if b % m == 0):
        row_min = zeros.view(c, b // m, m).sum(-1).amin(-1)
        for n in sorted(set(row_min.clamp(max=m - 1).tolist()) - {0}):
            cost = _nm_bytes(c, b, n, m, int((row_min < n).sum()), size)
            options.append((cost, 0, {"format": "nm", "n": n, "m": m}))
    plan = min(options, key=lambda o: o[:2])[2]
    meta.update(plan)
    if meta["format"] == "bitmask":
        return meta, {"bitmask": _pack_mask(~zeros), "values": w[~zeros]}
    if meta["format"] == "nm":
        return meta, _encode_nm(w, meta)
    return meta, {}


def _nm_bytes(c: int, b: int, n: int, m: int, outliers: int, size: int) -> int:
    kept = (c - outliers) * (b // m) * (m - n)
    row_mask = math.ceil(c / 8) if outliers else 0
    return kept * size + math.ceil(kept * code_bits(m) / 8) + outliers * b * size + row_mask


def _encode_nm(w: torch.Tensor, meta: dict) -> dict[str, torch.Tensor]:
    n, m = meta["n"], meta["m"]
    b = w.shape[1]
    zeros = zero_bits(w)
    ok = (zeros.view(-1, b // m, m).sum(-1) >= n).all(-1)
    values, positions = nm_compress(w[ok], n, m)
    parts = {"nm_values": values, "nm_positions": pack_codes(positions, code_bits(m))}
    meta["outliers"] = int((~ok).sum())
    if meta["outliers"]:
        parts["outlier_rows"] = _pack_mask(~ok)
        parts["outlier_values"] = w[~ok].contiguous()
    return parts


def _pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as 1 bit per element (flattened, little-endian bit order), uint8."""
    return torch.from_numpy(np.packbits(mask.reshape(-1).cpu().numpy(), bitorder="little"))


def _unpack_mask(packed: torch.Tensor, count: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count, bitorder="little").astype(bool))


def _add_to_config(config_file: Path, entry: dict) -> None:
    config = json.loads(config_file.read_text())
    config[FORMAT_KEY] = entry
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- loading


def decode(meta: dict, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`encode` (before any transpose)."""
    c, b = meta["shape"]
    if meta["format"] == "bitmask":
        values = parts["values"]
        w = values.new_zeros(c * b)
        w[_unpack_mask(parts["bitmask"], c * b)] = values
        return w.view(c, b)
    n, m, k = meta["n"], meta["m"], meta["outliers"]
    count = (c - k) * (b // m) * (m - n)
    positions = unpack_codes(parts["nm_positions"], code_bits(m), count).view(c - k, b // m, m - n)
    sparse = nm_decompress(parts["nm_values"], positions, n, m, b)
    if not k:
        return sparse
    w = sparse.new_empty(c, b)
    dense_rows = _unpack_mask(parts["outlier_rows"], c)
    w[~dense_rows] = sparse
    w[dense_rows] = parts["outlier_values"]
    return w


def decompress_state_dict(path: str | os.PathLike, layers: dict | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict of a compact directory (``layers``: its config entry's ``layers``)."""
    path = Path(path)
    layers = layers if layers is not None else _compact_entry(_read_config(path).get(FORMAT_KEY))["layers"]
    state: dict[str, torch.Tensor] = {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for shard in _weight_files(path):
        for key, tensor in load_file(shard).items():
            base, sep, part = key.rpartition(":")
            if sep and base in layers:
                grouped.setdefault(base, {})[part] = tensor
            else:
                state[key] = tensor
    for key, parts in grouped.items():
        w = decode(layers[key], parts)
        state[key] = w.T.contiguous() if layers[key]["transposed"] else w
    return state


def load_pretrained(path: str | os.PathLike, **kwargs) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` for a compact directory (a normal dense one works too).

    ``kwargs`` go to ``from_pretrained`` (``dtype``, ``device_map``, ...);
    without ``dtype`` the checkpoint's own dtype is used, so weights are
    bit-identical to the saved ones.
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM

    if not is_compact(path):
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    return _load_compact(functools.partial(model_class.from_pretrained, None), path, config, kwargs)


def register() -> None:
    """Let every transformers ``from_pretrained`` (Auto classes included) read compact directories.

    One line at start-up: ``thanos_rs.register()``. It wraps
    ``PreTrainedModel.from_pretrained`` (idempotent): a local directory whose
    config.json has the compact entry is decompressed and loaded with
    ``from_pretrained(None, config=..., state_dict=...)``; anything else goes to
    the original method untouched.
    """
    from transformers import PreTrainedModel

    original = PreTrainedModel.from_pretrained.__func__
    if getattr(original, "_thanos_rs_compact", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, name_or_path, *args, **kwargs):
        if name_or_path is None or not is_compact(name_or_path):
            return original(cls, name_or_path, *args, **kwargs)
        from transformers import AutoConfig, PretrainedConfig

        config = kwargs.pop("config", None)
        if not isinstance(config, PretrainedConfig):
            config = AutoConfig.from_pretrained(name_or_path)
        return _load_compact(functools.partial(original, cls, None, *args), name_or_path, config, kwargs)

    from_pretrained._thanos_rs_compact = True
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)


def is_compact(path: str | os.PathLike) -> bool:
    """True for a local directory written by :func:`save_compact`."""
    config_file = Path(path) / "config.json"
    return config_file.is_file() and FORMAT_KEY in json.loads(config_file.read_text())


def _load_compact(load, path, config, kwargs: dict) -> nn.Module:
    from transformers import GenerationConfig

    entry = _compact_entry(getattr(config, FORMAT_KEY, None))
    delattr(config, FORMAT_KEY)  # the loaded model is dense: its save_pretrained must not claim otherwise
    model = load(config=config, state_dict=decompress_state_dict(path, entry["layers"]), **kwargs)
    if (Path(path) / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def _compact_entry(entry) -> dict:
    if not isinstance(entry, dict) or "layers" not in entry:
        raise ModelError(f"config.json has no valid {FORMAT_KEY!r} entry; this is not a thanos_rs compact directory")
    if entry.get("version") != VERSION:
        raise ModelError(f"compact checkpoint version {entry.get('version')!r} is not supported by this thanos_rs "
                         f"(reads version {VERSION}); upgrade thanos_rs")
    return entry


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path / 'config.json'}: {e}") from None


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    raise ModelError(f"{path} has neither {WEIGHTS_NAME} nor {INDEX_NAME}; is it a complete compact directory?")


# ---------------------------------------------------------------- report


@dataclass
class CompactReport:
    """Bytes on disk of a compact directory, and what the same directory would take dense."""

    formats: dict[str, str]  # weight key -> dense / bitmask / nm (n:m)
    linear_dense_bytes: int
    linear_compact_bytes: int
    dir_bytes: int

    @property
    def dense_dir_bytes(self) -> int:
        return self.dir_bytes - self.linear_compact_bytes + self.linear_dense_bytes

    @property
    def linear_ratio(self) -> float:
        return self.linear_compact_bytes / max(1, self.linear_dense_bytes)

    @property
    def dir_ratio(self) -> float:
        return self.dir_bytes / max(1, self.dense_dir_bytes)

    def encodings(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fmt in self.formats.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        return {
            "linear_dense_bytes": self.linear_dense_bytes,
            "linear_compact_bytes": self.linear_compact_bytes,
            "linear_ratio": self.linear_ratio,
            "dense_dir_bytes": self.dense_dir_bytes,
            "dir_bytes": self.dir_bytes,
            "dir_ratio": self.dir_ratio,
            "encodings": self.encodings(),
        }

    def table(self) -> str:
        mib = 2**20
        return "\n".join([
            f"{'':<16} {'dense MiB':>10} {'compact MiB':>12} {'ratio':>6}",
            f"{'linear weights':<16} {self.linear_dense_bytes / mib:>10.2f} {self.linear_compact_bytes / mib:>12.2f} "
            f"{self.linear_ratio:>6.3f}",
            f"{'whole directory':<16} {self.dense_dir_bytes / mib:>10.2f} {self.dir_bytes / mib:>12.2f} "
            f"{self.dir_ratio:>6.3f}",
            "linear encodings: " + ", ".join(f"{n} {fmt}" for fmt, n in self.encodings().items()),
        ])


def compact_report(path: str | os.PathLike) -> CompactReport:
    """Sizes read from the safetensors headers (no tensor is loaded) and the directory listing."""
    path = Path(path)
    layers = _compact_entry(_read_config(path).get(FORMAT_KEY))["layers"]
    compact = dict.fromkeys(layers, 0)
    for shard in _weight_files(path):
        for key, nbytes in _tensor_bytes(shard).items():
            base = key.rpartition(":")[0] or key
            if base in compact:
                compact[base] += nbytes
    dense = sum(math.prod(meta["shape"]) * getattr(torch, meta["dtype"]).itemsize for meta in layers.values())
    formats = {key: meta["format"] + (f" {meta['n']}:{meta['m']}" if meta["format"] == "nm" else "")
               for key, meta in layers.items()}
    return CompactReport(formats, dense, sum(compact.values()),
                         sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))


def _tensor_bytes(shard: Path) -> dict[str, int]:
    """Bytes of every tensor of a safetensors file, from its header (u64 length + JSON)."""
    with open(shard, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {key: info["data_offsets"][1] - info["data_offsets"][0]
            for key, info in header.items() if key != "__metadata__"}
