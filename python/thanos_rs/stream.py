"""``--offload disk``: a model that lives in its safetensors shards, one decoder block in RAM at a time.

The model is built on the ``meta`` device (no memory), then only what sits
outside the decoder blocks (embeddings, final norm, lm_head) is read in. The
pipeline asks for one block at a time: :meth:`StreamedModel.load_block` reads
its tensors from the shards (``safe_open``: memory-mapped, only those tensors
are touched) and :meth:`StreamedModel.release_block` turns them back into meta
tensors once the block's pruned tensors are written. :class:`ShardWriter` writes
the output the same way: one shard per block as it is done, the rest and the
index file at the end. Peak host RAM is about one block, the activations and
the embeddings, not the model.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .errors import ModelError
from .model import Decoder, find_decoder, first_line, resolve_dtype, resolve_source
from .report import save_tensors_atomic

__all__ = ["CheckpointFiles", "ShardWriter", "StreamedModel", "open_streamed"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]  # weights, configs, tokenizer


class CheckpointFiles:
    """The safetensors shards of a model directory: which file holds each tensor."""

    def __init__(self, directory: Path):
        self.directory = directory
        if (directory / INDEX_FILE).is_file():
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        elif (directory / SINGLE_FILE).is_file():
            with safe_open(directory / SINGLE_FILE, "pt") as f:
                weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise ModelError(
                f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}: --offload disk streams safetensors "
                "checkpoints; load the model once and save_pretrained() it, or use --offload cpu"
            )
        self.weight_map: dict[str, str] = weight_map

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The named (stored) tensors, each file opened once and closed again (its mapping released)."""
        by_file: dict[str, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.weight_map[key], []).append(key)
        tensors = {}
        for name, file_keys in by_file.items():
            with safe_open(self.directory / name, "pt") as f:
                tensors.update({k: f.get_tensor(k) for k in file_keys})
        return tensors


class StreamedModel:
    """A model whose decoder blocks are meta tensors until :meth:`load_block`."""

    def __init__(self, model: nn.Module, files: CheckpointFiles, dtype: torch.dtype):
        self.model, self.files, self.dtype = model, files, dtype
        self.decoder: Decoder = find_decoder(model)
        self.stored = self._stored_names()

    def _stored_names(self) -> dict[str, str]:
        """Model state-dict key -> the checkpoint's name for it, for every key the checkpoint has.

        A checkpoint saved from the base model (GPT-2's on the hub: ``h.0.attn...``)
        lacks its ``transformer.`` prefix; from_pretrained accepts both, and so do we.
        """
        base = getattr(self.model, "base_model_prefix", "")
        names = {}
        for key in self.model.state_dict():
            for name in (key, key.removeprefix(f"{base}.")) if base else (key,):
                if name in self.files.weight_map:
                    names[key] = name
                    break
        return names

    def block_keys(self, index: int) -> list[str]:
        """State-dict keys of block ``index`` that the checkpoint stores (persistent tensors)."""
        prefix = f"{self.decoder.prefix}.{index}."
        return [prefix + k for k in self.decoder.blocks[index].state_dict() if prefix + k in self.stored]

    def outside_keys(self) -> list[str]:
        """Stored keys outside the blocks: embeddings, final norm, an untied lm_head."""
        prefix = f"{self.decoder.prefix}."
        return [k for k in self.model.state_dict() if not k.startswith(prefix) and k in self.stored]

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The tensors of these model keys, from wherever the checkpoint stores them."""
        tensors = self.files.read([self.stored[k] for k in keys])
        return {k: tensors[self.stored[k]] for k in keys}

    def load_outside(self) -> None:
        self._assign(self.model, "", self.read(self.outside_keys()))
        self.model.tie_weights()  # a tied lm_head is not stored: point it at the loaded embeddings
        still_meta = [n for n, p in self.model.named_parameters()
                      if p.is_meta and not n.startswith(f"{self.decoder.prefix}.")]
        if still_meta:
            raise ModelError(f"the checkpoint in {self.files.directory} has no tensor for {still_meta[0]!r}")

    def load_block(self, index: int) -> None:
        block, prefix = self.decoder.blocks[index], f"{self.decoder.prefix}.{index}."
        self._assign(block, prefix, self.read(self.block_keys(index)))
        missing = [n for n, p in block.named_parameters() if p.is_meta]
        if missing:
            raise ModelError(f"the checkpoint in {self.files.directory} has no tensor {prefix + missing[0]!r}")

    def release_block(self, index: int) -> None:
        from accelerate.utils import set_module_tensor_to_device

        block = self.decoder.blocks[index]
        for name, _ in list(block.named_parameters()):
            set_module_tensor_to_device(block, name, "meta")
        _give_back_freed_memory()

    def block_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """Block ``index``'s stored tensors as they are now (pruned), keyed as in the checkpoint."""
        prefix = f"{self.decoder.prefix}.{index}."
        state = self.decoder.blocks[index].state_dict()
        return {k: state[k.removeprefix(prefix)] for k in self.block_keys(index)}

    def outside_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors outside the blocks, a tied one (lm_head = embeddings) once, as save_pretrained does."""
        state = self.model.state_dict()
        out, seen = {}, set()
        for key in self.outside_keys():
            if state[key].data_ptr() not in seen:
                seen.add(state[key].data_ptr())
                out[key] = state[key]
        return out

    def _assign(self, module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for key, tensor in tensors.items():
            # Floating tensors take the run's dtype, as from_pretrained(dtype=...) would give them.
            value = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
            set_module_tensor_to_device(module, key.removeprefix(prefix), "cpu", value=value)


def _give_back_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc only).

    glibc keeps the memory of freed blocks in its arenas (one per thread that
    allocated: rayon's and torch's workers), so without this the resident size
    creeps up by a few MB every block; with it, it stays flat.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def open_streamed(name_or_path: str, dtype: str = "auto", device: str = "cpu"):
    """A :class:`StreamedModel` of a local directory or hub id, its tokenizer, and the directory."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory = _local_directory(name_or_path)
    try:
        config = AutoConfig.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError...
        raise ModelError(f"cannot read the config or tokenizer of {name_or_path!r}: {first_line(e)}") from None
    torch_dtype = resolve_dtype(dtype, str(directory), device)
    if torch_dtype == "auto":
        torch_dtype = _config_dtype(config)
    files = CheckpointFiles(directory)
    # Parameters on meta (no memory); buffers such as rotary frequencies are computed for real.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.eval()
    streamed = StreamedModel(model, files, torch_dtype)
    streamed.load_outside()
    return streamed, tokenizer


class ShardWriter:
    """Writes a Hugging Face safetensors directory one shard at a time, then its index.

    Block ``i`` of ``n`` goes to ``model-{i+1}-of-{n+1}.safetensors`` and the tensors
    outside the blocks to the last shard, so a block can be written (and the
    memory it used freed) as soon as it is pruned.
    """

    def __init__(self, directory: Path, num_blocks: int):
        self.directory, self.total = directory, num_blocks + 1

    def shard_name(self, number: int) -> str:
        return f"model-{number + 1:05d}-of-{self.total:05d}.safetensors"

    def write(self, number: int, tensors: dict[str, torch.Tensor]) -> None:
        """Shard ``number`` (0-based), atomically: a killed write leaves no file under the final name."""
        save_tensors_atomic(self.directory / self.shard_name(number), tensors)

    def write_index(self) -> None:
        weight_map, total = {}, 0
        for number in range(self.total):  # read back from the files: a resumed run wrote only some of them
            name = self.shard_name(number)
            for key, (start, end) in _tensor_extents(self.directory / name).items():
                weight_map[key] = name
                total += end - start
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _local_directory(name_or_path: str) -> Path:
    source = resolve_source(name_or_path)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:  # only the safetensors weights, configs and tokenizer files: never the .bin duplicates
        return Path(snapshot_download(source, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - network, auth and not-found errors
        raise ModelError(f"cannot fetch {name_or_path!r} from the Hugging Face hub: {first_line(e)}") from None


def _config_dtype(config) -> torch.dtype:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, value) if isinstance(value, str) else value


def _tensor_extents(path: Path) -> dict[str, tuple[int, int]]:
    """Byte extents of every tensor in a safetensors file, from its JSON header."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}
