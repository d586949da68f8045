"""Perplexity and lm-eval zero-shot scores of an in-memory model.

An evaluation target is a perplexity source (``wikitext2`` or a .txt/.jsonl
file, see :mod:`thanos_rs.data`) or else an lm-eval task name. Perplexity is
``exp(mean next-token NLL)`` over the non-overlapping ``seqlen`` windows of the
token stream (the tail shorter than a window is dropped), as in SparseGPT.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import EvalTokens
from .errors import DataError
from .model import Decoder, move_outside_blocks

__all__ = ["is_perplexity_source", "lm_eval_scores", "perplexity", "placed"]

# Bound the float32 logits of one evaluation batch to about 256 MiB.
_LOGIT_BUDGET = 2**26
_MAX_EVAL_BATCH = 16


def is_perplexity_source(target: str) -> bool:
    return target == "wikitext2" or Path(target).suffix.lower() in (".txt", ".jsonl") or Path(target).is_file()


@torch.no_grad()
def perplexity(model: nn.Module, tokens: EvalTokens, seqlen: int, device: torch.device) -> float:
    ids = tokens.input_ids
    n_windows = ids.numel() // seqlen
    if n_windows == 0:
        raise DataError(
            f"evaluation text {tokens.protocol.get('dataset')} has {ids.numel()} tokens, "
            f"less than one window of seqlen={seqlen}; use more text or a lower --seqlen"
        )
    windows = ids[: n_windows * seqlen].view(n_windows, seqlen)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = max(1, min(_MAX_EVAL_BATCH, _LOGIT_BUDGET // (seqlen * vocab)))
    nll, count = 0.0, 0
    for chunk in windows.split(batch):
        chunk = chunk.to(device)
        logits = model(input_ids=chunk, use_cache=False).logits.float()
        predictions = logits[:, :-1].reshape(-1, logits.shape[-1])
        targets = chunk[:, 1:]
        nll += F.cross_entropy(predictions, targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    return math.exp(nll / count)


def lm_eval_scores(model, tokenizer, tasks: list[str], include_path: str | None = None,
                   limit: int | None = None, batch_size: int = 8) -> dict[str, dict]:
    """Zero-shot lm-eval results, task -> {metric: value}, through HFLM wrapping ``model``."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:  # lm-eval and accelerate are the optional 'eval' extra
        raise DataError(f"lm-eval tasks need the eval extra ({e.name} is missing): pip install 'thanos-rs[eval]'") from None

    manager = _task_manager(include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise DataError(
            f"unknown evaluation target(s) {', '.join(unknown)}: not 'wikitext2', a .txt/.jsonl file, "
            "or an lm-eval task (see `lm-eval ls tasks`; add local task YAMLs with --lm-eval-include DIR)"
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    return {
        task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for task, metrics in out["results"].items()
    }


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    # Indexing lm-eval's thousands of task YAMLs takes seconds: once per run, not per evaluation.
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


@contextmanager
def placed(model: nn.Module, decoder: Decoder, device: torch.device, stream: bool):
    """Make the whole model runnable on ``device`` for the duration of the block.

    ``stream=False`` moves the model there. ``stream=True`` (``--offload cpu``)
    keeps the blocks in host RAM and moves each one in just for its own call.
    """
    home = next(model.parameters()).device
    if not stream:
        model.to(device)
        try:
            yield
        finally:
            model.to(home)
        return
    # Hooks must return None: a returned value would replace the block's input or output.
    def arrive(block, _args):
        block.to(device)

    def leave(block, _args, _output):
        block.to(home)

    move_outside_blocks(model, decoder, device)
    handles = []
    for block in decoder.blocks:
        handles.append(block.register_forward_pre_hook(arrive))
        handles.append(block.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        move_outside_blocks(model, decoder, home)
