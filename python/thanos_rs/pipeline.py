"""Prune a whole causal LM, block by block (ALGORITHM.md, "The layer-sequential pipeline").

Calibration sequences go through the embeddings once; then, for each decoder
block in order: forward pre-hooks accumulate the Hessian of every linear, the
linears are pruned with :func:`thanos_rs.prune_layer`, and the block is re-run
with its pruned weights to produce the next block's inputs. Only the current
block and the activations are on the compute device; with ``offload="cpu"``
the activations stay in host RAM too and the solves run on the CPU; with
``offload="disk"`` the weights stay in their files as well (stream.py).

A run that saves its result keeps its progress beside the target and resumes
after a crash (resume.py); inside a torch.distributed process group the ranks
share the work (distributed.py).
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from . import spec as S
from .data import Calibration, EvalTokens, load_calibration, load_eval_tokens
from .distributed import World, current_world
from .errors import DataError, InputError
from .eval import is_perplexity_source, lm_eval_scores, perplexity, placed
from .hessian import HESSIAN_DTYPES, HessianAccumulator
from .export import compact_report, write_compact
from .kernels import prune_layer
from .model import (
    Decoder,
    capture_block_calls,
    check_save_target,
    find_decoder,
    GroupFinder,
    linear_groups,
    model_context,
    move_outside_blocks,
    run_block,
    weight_matrix,
    write_model,
)
from .report import LayerRecord, PruneReport, peak_memory, versions
from .resume import RunDir
from .shrink import check_shrinkable, shrink_mlp
from .stream import ShardWriter, StreamedModel

__all__ = ["PruneConfig", "check_config", "prune_model", "prune_blocks", "resolve_device"]

DEFAULT_MAX_SEQLEN = 2048
OFFLOAD_MODES = ("none", "cpu", "disk")
# Settings that change nothing in the pruned model: a resumed run may differ in them.
NOT_IN_FINGERPRINT = ("save", "overwrite", "report", "progress")
SAVE_FORMATS = ("dense", "compact")


@dataclass
class PruneConfig:
    """Everything a run needs besides the model; the CLI flags map one to one onto these."""

    method: str = "thanos"
    pattern: str = "unstructured"
    sparsity: float = 0.5
    alpha: float = 0.0
    block_size: int = 128
    damp: float = 0.01
    nsamples: int = 128
    seqlen: int | None = None  # None: min(2048, the model's context)
    calib: str = "c4"
    seed: int = 0
    device: str = "auto"
    offload: str = "none"  # "cpu": activations and solves on the host; "disk": weights streamed too
    true_sequential: bool = False
    batch_size: int = 8  # calibration sequences per forward pass
    hessian_dtype: str = "float32"
    backend: str = "auto"
    eval: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None
    lm_eval_limit: int | None = None
    save: str | None = None
    save_format: str = "dense"  # "compact": N:M / bitmask encodings of the pruned linears (export.py)
    shrink: bool = False  # structured only: drop removed MLP channels before saving (shrink.py)
    overwrite: bool = False
    report: str | None = None
    progress: bool = True


def prune_model(model: nn.Module | StreamedModel, tokenizer, config: PruneConfig | None = None,
                calibration: torch.Tensor | None = None) -> PruneReport:
    """Prune ``model`` in place as ``config`` says; return the report.

    ``calibration`` (nsamples x seqlen token ids) replaces ``config.calib``;
    ``tokenizer`` may then be None if nothing is evaluated or saved with it.
    Every argument is checked before any work starts, so a bad one costs no time
    and leaves no output behind. ``model`` is a :class:`StreamedModel`
    (:func:`thanos_rs.open_streamed`) exactly when ``config.offload == "disk"``.
    With ``config.save`` the run resumes what an identical earlier call left
    unfinished. Under an initialised torch.distributed process group every rank
    makes this call and the work is shared; rank 0 evaluates and saves.
    """
    config = config or PruneConfig()
    start = time.perf_counter()
    streamed = model if isinstance(model, StreamedModel) else None
    model = streamed.model if streamed else model
    layer_spec = check_config(config, tokenizer_given=tokenizer is not None, calibration_given=calibration is not None)
    if (streamed is not None) != (config.offload == "disk"):
        raise InputError("offload 'disk' and a StreamedModel (thanos_rs.open_streamed) go together: pass both or neither")
    device = resolve_device(config.device)
    world = current_world()
    decoder = find_decoder(model)
    if config.shrink:
        check_shrinkable(model)
    for index in range(len(decoder.blocks)):  # N:M groups must tile every layer: fail before any work
        for module in decoder.linears(index).values():
            S.check_width(layer_spec, weight_matrix(module).shape[1])
    model.eval()  # dropout off: calibration must see the deterministic forward
    calib = _calibration(model, tokenizer, config, calibration)
    seqlen = calib.input_ids.shape[1]
    ppl_data = {t: load_eval_tokens(t, tokenizer) for t in config.eval if is_perplexity_source(t)}
    tasks = [t for t in config.eval if not is_perplexity_source(t)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    report = PruneReport(
        config={**asdict(config), "pattern": str(layer_spec.pattern)},
        layers=[],
        protocol=_protocol(model, calib, ppl_data, seqlen, config, device, world),
        model_parameters=sum(p.numel() for p in model.parameters()),
    )
    def evaluate():
        if not world.main:
            return {}, {}
        return _evaluate(model, tokenizer, decoder, ppl_data, tasks, seqlen, device, config)

    job = _Job(world=world, streamed=streamed)
    if config.save:
        job.run = RunDir(config.save, _fingerprint(model, config, calib, device, world), world)
        job.progress = job.run.open(config.overwrite)
    if job.progress:
        report.perplexity_before, report.lm_eval_before = job.progress["perplexity_before"], job.progress["lm_eval_before"]
    else:
        report.perplexity_before, report.lm_eval_before = evaluate()
    job.before = {"perplexity_before": report.perplexity_before, "lm_eval_before": report.lm_eval_before}
    report.layers = prune_blocks(model, decoder, calib.input_ids, config, device, job)
    pruned = {r.name for r in report.layers}
    report.skipped_layers = [n for i in range(len(decoder.blocks)) for n in decoder.linears(i) if n not in pruned]
    report.perplexity_after, report.lm_eval_after = evaluate()
    report.peak_memory = peak_memory(device)
    report.versions = versions()
    report.seconds = time.perf_counter() - start
    if config.shrink:
        report.shrunk = shrink_mlp(model)
    if job.run:
        job.run.finish(lambda directory: _write_output(model, tokenizer, config, job, directory))
        if config.save_format == "compact" and world.main:
            report.checkpoint = compact_report(config.save).to_dict()
    if config.report and world.main:
        path = report.write_json(config.report)
        report.plot(path.with_suffix(".png"))
    return report


def check_config(config: PruneConfig, tokenizer_given: bool = True, calibration_given: bool = False) -> S.LayerSpec:
    """Every check that needs no model: run it before loading one (seconds to minutes)."""
    c = config
    layer_spec = S.make_spec(c.method, c.pattern, c.sparsity, c.alpha, c.block_size, c.damp)
    _check_options(config, tokenizer_given, calibration_given)
    resolve_device(config.device)
    if config.save:
        check_save_target(config.save, config.overwrite)
    return layer_spec


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu or auto")
    return dev


@dataclass
class _Job:
    """How a prune_model call runs: alone or as one rank, resumable or not, in RAM or from disk."""

    world: World = field(default_factory=World)
    streamed: StreamedModel | None = None
    run: RunDir | None = None
    progress: dict | None = None  # what the resumed run had finished
    before: dict = field(default_factory=dict)  # the evaluation before pruning, kept with the progress


@torch.no_grad()
def prune_blocks(model: nn.Module, decoder: Decoder, input_ids: torch.Tensor, config: PruneConfig,
                 device: torch.device, job: _Job | None = None) -> list[LayerRecord]:
    """The sequential pipeline proper; returns one record per pruned linear, in order."""
    job = job or _Job()
    store = torch.device("cpu") if config.offload in ("cpu", "disk") else device
    batches = job.world.batches(list(input_ids.split(config.batch_size)))
    hidden, calls = _embed(model, decoder, batches, device, store)
    records: list[LayerRecord] = []
    first = 0
    if job.progress:
        first = job.progress["done"]
        if job.world.main:
            print(f"resuming from {job.run.root}: {first} of {len(decoder.blocks)} blocks already pruned",
                  file=sys.stderr)
        records = [LayerRecord(**{**r, "shape": tuple(r["shape"])}) for r in job.progress["records"]]
        hidden = [h.to(store) for h in job.run.hidden(first)]
        if not job.streamed:
            job.run.restore_blocks(decoder, first)
    n = len(decoder.blocks)
    bar = tqdm(range(first, n), initial=first, total=n, desc="blocks", unit="block", file=sys.stderr,
               disable=not (config.progress and job.world.main))
    for index in bar:
        block = decoder.blocks[index]
        if job.streamed:
            job.streamed.load_block(index)
        home = _device_of(block)
        block.to(device)
        block_calls = {size: per_block[index] for size, per_block in calls.items()}
        records += _prune_block(decoder, index, hidden, block_calls, config, device, job.world)
        # The pruned block's outputs are the next block's inputs.
        hidden = [run_block(block, h.to(device), block_calls[len(h)]).to(store) for h in hidden]
        block.to(home)
        if job.run:
            _commit(job, decoder, index, hidden, records)
        if job.streamed:
            job.streamed.release_block(index)
    return records


def _commit(job: _Job, decoder: Decoder, index: int, hidden, records) -> None:
    """Make block ``index`` durable: its pruned tensors, its outputs, the records so far."""
    progress = {**job.before, "records": [asdict(r) for r in records]}
    if job.streamed:  # the block's shard of the output, written once and final
        if job.world.main:
            ShardWriter(job.run.model_dir, len(decoder.blocks)).write(index, job.streamed.block_tensors(index))
        job.run.commit(index, hidden, progress, block_tensors=None)
    else:
        prefix = f"{decoder.prefix}.{index}."
        state = {prefix + k: v for k, v in decoder.blocks[index].state_dict().items()}
        job.run.commit(index, hidden, progress, block_tensors=state)


def _write_output(model, tokenizer, config: PruneConfig, job: _Job, directory) -> None:
    """Complete the output directory of a finished run (called on rank 0 only)."""
    if job.streamed:
        writer = ShardWriter(directory, len(job.streamed.decoder.blocks))
        writer.write(len(job.streamed.decoder.blocks), job.streamed.outside_tensors())
        writer.write_index()
        model.config.dtype = job.streamed.dtype
        model.config.save_pretrained(directory)
        if model.can_generate():
            model.generation_config.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return
    for leftover in directory.iterdir():  # a run killed while writing them, then resumed
        leftover.unlink()
    if config.save_format == "compact":
        write_compact(model, tokenizer, directory)
    else:
        write_model(model, tokenizer, directory)


def _embed(model, decoder, batches, device, store):
    """Block 0's inputs per mini-batch, and every block's recorded call per batch size.

    Calibration sequences are unpadded and of equal length, so a block's call
    (masks, positions) depends only on the batch size: one recording per size.
    """
    home = _device_of(model)
    move_outside_blocks(model, decoder, device)
    hidden, calls = [], {}
    try:
        for batch in batches:
            h, per_block = capture_block_calls(model, decoder, batch.to(device))
            hidden.append(h.to(store))
            calls.setdefault(len(batch), per_block)
    finally:
        move_outside_blocks(model, decoder, home)
    return hidden, calls


def _prune_block(decoder, index, hidden, calls, config, device, world: World) -> list[LayerRecord]:
    block = decoder.blocks[index]
    linears = decoder.linears(index)
    # Shown from the start (the accumulation is the long part); its total once the groups are known.
    bar = tqdm(total=None, desc=f"block {index}", unit="layer", leave=False,
               file=sys.stderr, disable=not (config.progress and world.main))
    if config.true_sequential:
        # One step per group (q,k,v -> o -> gate,up -> down), each accumulated after the
        # earlier groups are pruned (lazily: a generator), so the groups come first.
        groups = linear_groups(block, linears, hidden[0].to(device), calls[len(hidden[0])])
        steps = (([g], _accumulate(block, [linears[g[0]]], hidden, calls, config, device, world)) for g in groups)
    else:
        # One step, every Hessian from the dense block; the groups found in the same run.
        groups, hessians = _accumulate_grouped(block, linears, hidden, calls, config, device, world)
        steps = iter([(groups, hessians)])
    bar.total = sum(map(len, groups))
    bar.refresh()
    records = []
    for step, hessians in steps:
        names = [(name, hessian) for group, hessian in zip(step, hessians) for name in group]
        # Several ranks: each solves its share of the step's layers and sends them to the others.
        owners = world.owners([tuple(weight_matrix(linears[name]).shape) for name, _ in names])
        for owner, (name, hessian) in zip(owners, names):
            bar.set_postfix_str(name.rsplit(".", 1)[-1])
            module = linears[name]
            records.append(world.solve_on(owner, lambda: _prune_linear(name, module, hessian, config),
                                          module.weight.data))
            bar.update()
    bar.close()
    return records


def _accumulate(block, readers, hidden, calls, config, device, world: World) -> list[torch.Tensor]:
    """Run the block over all calibration batches; the Hessian of each reader's input."""
    accumulators = [HessianAccumulator(weight_matrix(m).shape[1], device, config.hessian_dtype) for m in readers]
    handles = [acc.hook(m) for acc, m in zip(accumulators, readers)]
    try:
        for h in hidden:
            run_block(block, h.to(device), calls[len(h)])
    finally:
        for handle in handles:
            handle.remove()
    return [world.mean_hessian(acc.hessian, acc.tokens) for acc in accumulators]


def _accumulate_grouped(block, linears, hidden, calls, config, device, world: World):
    """The groups of ``linear_groups`` and their Hessians from one run over the batches.

    The groups are found on the first batch (``GroupFinder``); every call of a group
    leader, in every batch, feeds its group's Hessian.
    """
    finder = GroupFinder()
    accumulators: dict[str, HessianAccumulator] = {}  # by group leader
    first_batch = [True]

    def watcher(name: str, module: nn.Module):
        def pre_hook(_module, args):
            if first_batch[0] and finder.see(name, args[0]):
                accumulators[name] = HessianAccumulator(weight_matrix(module).shape[1], device, config.hessian_dtype)
            if name in accumulators:
                accumulators[name].add(args[0])

        return pre_hook

    handles = [m.register_forward_pre_hook(watcher(n, m)) for n, m in linears.items()]
    try:
        for h in hidden:
            run_block(block, h.to(device), calls[len(h)])
            first_batch[0] = False
            finder.forget_input()
    finally:
        for handle in handles:
            handle.remove()
    leaders = [accumulators[g[0]] for g in finder.groups]
    return finder.groups, [world.mean_hessian(acc.hessian, acc.tokens) for acc in leaders]


def _prune_linear(name: str, module: nn.Module, hessian: torch.Tensor, config: PruneConfig) -> LayerRecord:
    weight = weight_matrix(module)
    # --offload cpu: the solve runs on the host (the Rust kernels under backend="auto").
    solve_on = torch.device("cpu") if config.offload == "cpu" else weight.device
    res = prune_layer(weight.to(solve_on), hessian.to(solve_on), method=config.method, pattern=config.pattern,
                      sparsity=config.sparsity, alpha=config.alpha, block_size=config.block_size,
                      damp=config.damp, backend=config.backend)
    weight.copy_(res.weight.to(weight.device))
    return LayerRecord(
        name=name, shape=tuple(weight.shape), method=config.method, pattern=res.pattern,
        sparsity=res.sparsity, loss=res.loss, damp=res.damp, seconds=res.seconds,
        zeros=int(torch.count_nonzero(res.mask)), backend=res.backend,
    )


def _evaluate(model, tokenizer, decoder, ppl_data: dict[str, EvalTokens], tasks, seqlen, device, config):
    if not ppl_data and not tasks:
        return {}, {}
    with placed(model, decoder, device, stream=config.offload == "cpu"):
        ppl = {source: perplexity(model, tokens, seqlen, device) for source, tokens in ppl_data.items()}
        scores = lm_eval_scores(model, tokenizer, tasks, config.lm_eval_include, config.lm_eval_limit) if tasks else {}
    return ppl, scores


def _calibration(model, tokenizer, config: PruneConfig, calibration) -> Calibration:
    context = model_context(model)
    if calibration is not None:
        ids = _check_token_ids(calibration)
        _check_seqlen(ids.shape[1], context)
        protocol = {"dataset": "token ids passed to prune_model", "nsamples": ids.shape[0], "seqlen": ids.shape[1]}
        return Calibration(ids, protocol)
    seqlen = config.seqlen or min(DEFAULT_MAX_SEQLEN, context or DEFAULT_MAX_SEQLEN)
    _check_seqlen(seqlen, context)
    return load_calibration(config.calib, tokenizer, config.nsamples, seqlen, config.seed)


def _fingerprint(model, config: PruneConfig, calib: Calibration, device: torch.device, world: World) -> dict:
    """What decides the pruned model: a saved run resumes only under the same fingerprint."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_IN_FINGERPRINT}
    ids = calib.input_ids.contiguous().numpy().tobytes()
    return {
        "model": getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__,
        "settings": settings,
        "calibration_sha256": hashlib.sha256(ids).hexdigest(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": device.type,
        "processes": world.size,
    }


def _check_seqlen(seqlen: int, context: int | None) -> None:
    if context is not None and seqlen > context:
        raise InputError(
            f"seqlen {seqlen} exceeds the model's context of {context} tokens (max_position_embeddings); "
            f"use --seqlen {context} or less"
        )


def _check_token_ids(ids) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.numel() == 0 or ids.is_floating_point():
        raise DataError("calibration must be a non-empty (nsamples, seqlen) integer tensor of token ids")
    return ids.to(torch.int64)


def _check_options(config: PruneConfig, tokenizer_given: bool, calibration_given: bool) -> None:
    if config.offload not in OFFLOAD_MODES:
        raise InputError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {config.offload!r}")
    if config.hessian_dtype not in HESSIAN_DTYPES:
        raise InputError(f"hessian_dtype must be 'float32' or 'float64', got {config.hessian_dtype!r}")
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {config.batch_size!r}")
    if config.save_format not in SAVE_FORMATS:
        raise InputError(f"save_format must be one of {', '.join(SAVE_FORMATS)}, got {config.save_format!r}")
    if config.shrink and (S.parse_pattern(config.pattern).kind != "structured" or config.alpha > 0):
        raise InputError("shrink removes whole MLP channels: it needs pattern 'structured' with alpha=0")
    if config.offload == "disk":
        _check_disk_offload(config)
    if config.backend not in S.BACKENDS:
        raise InputError(f"unknown backend {config.backend!r}: choose one of {', '.join(S.BACKENDS)}")
    if not calibration_given:
        if isinstance(config.nsamples, bool) or not isinstance(config.nsamples, int) or config.nsamples < 1:
            raise DataError(f"nsamples must be a positive integer (calibration sequences), got {config.nsamples!r}")
        if config.seqlen is not None and (not isinstance(config.seqlen, int) or config.seqlen < 1):
            raise DataError(f"seqlen must be a positive integer (tokens per sequence), got {config.seqlen!r}")
    if not tokenizer_given and (not calibration_given or config.eval):
        raise InputError(
            "a tokenizer is needed to read calibration or evaluation text; pass one, or token ids as calibration"
        )


def _check_disk_offload(config: PruneConfig) -> None:
    if not config.save:
        raise InputError("offload 'disk' writes the pruned model block by block as it goes: give it --save DIR")
    if config.save_format != "dense" or config.shrink:
        raise InputError("offload 'disk' writes dense safetensors shards: drop --format compact and --shrink, "
                         "or prune in RAM with --offload cpu")
    if config.eval:
        raise InputError("offload 'disk' never holds the whole model, so it cannot evaluate it: drop --eval and "
                         "evaluate the saved directory afterwards, or prune in RAM with --offload cpu")


def _protocol(model, calib: Calibration, ppl_data, seqlen, config, device, world: World) -> dict:
    return {
        "model": getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__,
        "calibration": calib.protocol,
        "evaluation": {source: {**tokens.protocol, "seqlen": seqlen} for source, tokens in ppl_data.items()},
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "hessian_dtype": config.hessian_dtype,
        "device": str(device),
        "offload": config.offload,
        "true_sequential": config.true_sequential,
        "processes": world.size,
    }


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
