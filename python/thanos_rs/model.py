"""A Hugging Face causal LM seen as what the pipeline needs: blocks, linears, their calls.

Everything is found by structure, never by model name: the decoder blocks are
the ``nn.ModuleList`` whose elements hold linear layers (the one with
``num_hidden_layers`` elements, else the largest), and a block's prunable
layers are its ``nn.Linear`` and transformers ``Conv1D`` modules (GPT-2's
Conv1D stores ``W^T``; :func:`weight_matrix` hides that). How the model calls
each block (masks, position ids / embeddings, cache flags) is recorded with
forward pre-hooks, so a block can later be replayed on any hidden states.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError, ModelError

__all__ = [
    "LINEAR_TYPES",
    "BlockCall",
    "Decoder",
    "capture_block_calls",
    "check_save_target",
    "find_decoder",
    "GroupFinder",
    "linear_groups",
    "load_model",
    "model_context",
    "move_outside_blocks",
    "run_block",
    "save_model",
    "swap_in",
    "weight_matrix",
    "write_model",
]

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = nn.Linear

LINEAR_TYPES = (nn.Linear, Conv1D)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Decoder:
    """The decoder blocks of a model and where they live (``prefix.i.<linear>``)."""

    prefix: str
    blocks: nn.ModuleList

    def linears(self, index: int) -> dict[str, nn.Module]:
        """Prunable layers of block ``index``: full module name -> module, in definition order."""
        block = self.blocks[index]
        return {
            f"{self.prefix}.{index}.{name}": module
            for name, module in block.named_modules()
            if isinstance(module, LINEAR_TYPES)
        }


@dataclass
class BlockCall:
    """One recorded call of a block, minus its hidden states (which change per block)."""

    args: tuple
    kwargs: dict


class _StopForward(Exception):
    """Raised by the capture hook once every block's call is recorded."""


# ---------------------------------------------------------------- structure


def find_decoder(model: nn.Module) -> Decoder:
    """The ``nn.ModuleList`` of decoder blocks, or a ModelError saying what is missing."""
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and all(_has_linear(b) for b in module)
    ]
    if not candidates:
        raise ModelError(
            f"{type(model).__name__} has no nn.ModuleList of decoder blocks containing nn.Linear or Conv1D "
            "layers; thanos_rs prunes decoder-only transformers (Llama, Mistral, Qwen, Gemma, Phi-3, OPT, GPT-2, ...)"
        )
    n_layers = getattr(_text_config(model), "num_hidden_layers", None)
    exact = [c for c in candidates if len(c[1]) == n_layers]
    # Expert lists inside blocks also qualify; the blocks list holds them, so it is the largest.
    name, blocks = max(exact or candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))
    return Decoder(name, blocks)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight W of ``y = W x`` as a view: Conv1D stores W^T."""
    weight = module.weight.data
    return weight.T if isinstance(module, Conv1D) else weight


def model_context(model: nn.Module) -> int | None:
    """The longest sequence the model was built for, if its config says."""
    config = _text_config(model)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, LINEAR_TYPES) for m in module.modules())


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


# ---------------------------------------------------------------- calls


def capture_block_calls(model: nn.Module, decoder: Decoder, input_ids: torch.Tensor):
    """Run ``input_ids`` through the embeddings; return block 0's hidden states and every block's call.

    Each block gets a forward pre-hook that records its arguments; the blocks
    themselves are bypassed (their weights may stay off the device), and the
    last block's hook raises a private exception that stops the forward before
    the final norm and lm_head. Per-block calls matter: hybrid models (Gemma 2,
    Qwen 3 with sliding windows) give alternate blocks different masks.
    """
    blocks = decoder.blocks
    calls: list[BlockCall | None] = [None] * len(blocks)
    first_hidden: list[torch.Tensor] = []

    def recorder(index: int):
        def pre_hook(_module, args, kwargs):
            hidden, call = _split_call(args, kwargs)
            if index == 0:
                first_hidden.append(hidden)
            calls[index] = call
            if index == len(blocks) - 1:
                raise _StopForward
            return None

        return pre_hook

    handles = [b.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, b in enumerate(blocks)]
    for block in blocks:
        block.forward = _passthrough  # instance attribute: shadows the class's forward for this call
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            del block.forward
    if not first_hidden or any(c is None for c in calls):
        raise ModelError(
            f"{type(model).__name__}.forward did not call every block of {decoder.prefix} in order; "
            "thanos_rs needs a decoder-only model whose forward runs its blocks one after another"
        )
    return first_hidden[0], calls


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """Replay a recorded call on new hidden states; returns the block's output hidden states."""
    out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class GroupFinder:
    """The groups of linears that read the same input, built from their calls in order.

    Consecutive calls on the very same tensor object form a group (q,k,v; gate,up):
    they share one Hessian, and true-sequential pruning treats them as one step. A
    linear already in a group is not grouped again (a second call changes nothing).
    """

    def __init__(self):
        self.groups: list[list[str]] = []
        self._last_input: torch.Tensor | None = None  # held, so identity stays meaningful

    def see(self, name: str, x: torch.Tensor) -> bool:
        """Record a call of linear ``name`` on ``x``; True if it starts a new group."""
        if any(name in g for g in self.groups):
            return False
        if self._last_input is not None and x is self._last_input:
            self.groups[-1].append(name)
            return False
        self.groups.append([name])
        self._last_input = x
        return True

    def forget_input(self) -> None:
        """Release the last input (between forward passes)."""
        self._last_input = None


def linear_groups(block: nn.Module, linears: dict[str, nn.Module], hidden: torch.Tensor, call: BlockCall):
    """The block's linears in execution order, grouped by the input tensor they read
    (``GroupFinder``). Linears the forward never calls are left out (nothing to
    calibrate them on).
    """
    finder = GroupFinder()

    def watcher(name: str):
        def pre_hook(_module, args):
            finder.see(name, args[0])

        return pre_hook

    handles = [m.register_forward_pre_hook(watcher(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            run_block(block, hidden, call)
    finally:
        for handle in handles:
            handle.remove()
    return finder.groups


def move_outside_blocks(model: nn.Module, decoder: Decoder, device: torch.device) -> None:
    """Move every parameter and buffer except the decoder blocks' (embeddings, norms, head)."""

    def move(module: nn.Module) -> None:
        if module is decoder.blocks:
            return
        for param in module.parameters(recurse=False):
            param.data = param.data.to(device)  # in place on the Parameter keeps tied weights tied
        for name, buf in module.named_buffers(recurse=False):
            module._buffers[name] = buf.to(device)
        for child in module.children():
            move(child)

    move(model)


def _split_call(args: tuple, kwargs: dict):
    if args:
        hidden, rest = args[0], tuple(args[1:])
    elif "hidden_states" in kwargs:
        kwargs = dict(kwargs)
        hidden, rest = kwargs.pop("hidden_states"), ()
    else:
        raise ModelError("a decoder block was called without hidden states as its first argument")
    kwargs = dict(kwargs)
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False  # replays must not grow a KV cache
    return hidden, BlockCall(rest, kwargs)


def _passthrough(hidden_states, *args, **kwargs):
    return hidden_states


# ---------------------------------------------------------------- loading and saving


def load_model(name_or_path: str, dtype: str = "auto", device: str = "cpu"):
    """Load a causal LM and its tokenizer from a local directory or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(name_or_path)
    torch_dtype = resolve_dtype(dtype, source, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, safetensors errors...
        where = "" if Path(source).is_dir() else " (no local directory of that name; tried the Hugging Face hub)"
        raise ModelError(f"cannot load a causal LM from {name_or_path!r}{where}: {first_line(e)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot load the tokenizer of {name_or_path!r}: {first_line(e)}") from None
    model.eval()
    return model, tokenizer


def resolve_source(name_or_path: str) -> str:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"--model {name_or_path!r} is a file; pass the model's directory (with config.json)")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model directory {name_or_path!r} has no config.json; is it a Hugging Face model directory?"
            )
        return str(path)
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ModelError(f"model directory {name_or_path!r} does not exist")
    return name_or_path  # a hub id such as "meta-llama/Llama-2-7b-hf"


def resolve_dtype(dtype: str, source: str, device: str):
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != "auto":
        raise InputError(f"dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    if not str(device).startswith("cuda"):
        return torch.float32  # half-precision matmuls are slow (or missing) on CPUs
    return "auto"  # the checkpoint's own dtype on the GPU


def check_save_target(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to write over an existing non-empty directory (or a file) unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"--save {str(path)!r} is an existing file; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f"--save directory {str(path)!r} exists and is not empty; pass --overwrite to replace it")


def save_model(model: nn.Module, tokenizer, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a from_pretrained-loadable directory atomically: all of it appears, or nothing."""
    return write_dir_atomically(path, overwrite, lambda tmp: write_model(model, tokenizer, tmp))


def write_model(model: nn.Module, tokenizer, directory: Path) -> None:
    """``save_pretrained`` the model (and tokenizer, if given) into an existing directory."""
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def write_dir_atomically(path: str | os.PathLike, overwrite: bool, write) -> Path:
    """Run ``write(tmp)`` on a fresh sibling directory, then rename it to ``path``.

    A failure leaves nothing under ``path`` (and an overwritten one intact).
    """
    path = Path(path).absolute()
    check_save_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same filesystem, so the final rename is atomic; mkdir (not
    # mkdtemp, which makes it 0700) so the result gets the user's usual permissions.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial"
    tmp.mkdir()
    try:
        write(tmp)
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def decoder_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable linear of every decoder block: full name -> module (lm_head is not one)."""
    decoder = find_decoder(model)
    return {name: module for i in range(len(decoder.blocks)) for name, module in decoder.linears(i).items()}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def swap_in(new: Path, path: Path) -> None:
    """Rename the finished directory ``new`` to ``path``, replacing what is there only once it is in place."""
    if not path.exists():
        os.replace(new, path)
        return
    old = new.with_suffix(".old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
