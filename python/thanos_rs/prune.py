"""``python -m thanos_rs.prune``: prune a Hugging Face causal LM from the command line.

With ``--model`` it prunes that model (a local directory or a hub id). Without
it, it prunes the small model bundled with the package: given ``--method`` or
``--pattern``, that one configuration; otherwise the comparison demo, a
perplexity table of every method at unstructured 50%, 2:4 and structured 30%.

Under ``torchrun --nproc-per-node N`` the processes share the work
(distributed.py); rank 0 prints, evaluates and writes.

Errors a user can fix print one line ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from . import spec as S
from .errors import InputError, ThanosError

__all__ = ["main", "build_parser"]

DEMO_GRID = [("unstructured", 0.5), ("2:4", 0.5), ("structured", 0.3)]
DEMO_NSAMPLES, DEMO_SEQLEN = 32, 256


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m thanos_rs.prune",
        description="One-shot post-training pruning of a causal LM with Thanos, SparseGPT, Wanda or magnitude.",
    )
    add = p.add_argument
    add("--model", default=None, help="local model directory or hub id (default: the bundled model: with "
        "--method or --pattern one run, otherwise a comparison of every method and pattern)")
    add("--method", choices=S.METHODS, default=None, help="pruning method (default: thanos)")
    add("--pattern", default=None, help="'unstructured', 'N:M' (e.g. 2:4) or 'structured' (default: unstructured)")
    add("--sparsity", type=float, default=0.5, help="fraction of weights (unstructured) or input columns "
        "(structured) removed; ignored for N:M (default: %(default)s)")
    add("--alpha", type=float, default=0.0, help="Thanos outlier-row fraction kept dense, N:M and structured "
        "only (default: %(default)s)")
    add("--block-size", type=int, default=128, help="columns per block of the Thanos/SparseGPT solve "
        "(default: %(default)s)")
    add("--damp", type=float, default=0.01, help="Hessian damping, a fraction of mean(diag(H)) (default: %(default)s)")
    add("--nsamples", type=int, default=None,
        help=f"calibration sequences (default: 128; {DEMO_NSAMPLES} for the bundled model)")
    add("--seqlen", type=int, default=None, help="tokens per calibration and evaluation sequence "
        f"(default: min(2048, model context); {DEMO_SEQLEN} for the bundled model)")
    add("--calib", default=None, help="calibration data: c4, wikitext2 or a file: .txt with documents separated "
        "by lines holding only <|endoftext|> (else by blank lines), or .jsonl with a 'text' field per line "
        "(default: c4; the bundled text for the bundled model)")
    add("--seed", type=int, default=0, help="seed of the calibration sampler (default: %(default)s)")
    add("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu (default: %(default)s)")
    add("--offload", choices=("none", "cpu", "disk"), default="none", help="cpu: keep model and activations in "
        "host RAM and solve on the CPU with the Rust kernels; the device only runs forward passes and Hessians. "
        "disk: as cpu, and the weights stay in the checkpoint's safetensors files: one decoder block at a time "
        "is read, pruned and written to --save, so peak RAM is about one block plus activations (needs --save; "
        "no --eval) (default: %(default)s)")
    add("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto", help="dtype to load the "
        "model in; auto: the checkpoint's on CUDA, float32 on CPU (default: %(default)s)")
    add("--true-sequential", action="store_true", help="re-run each block between its linear groups "
        "(q,k,v -> o -> gate,up -> down) (default: off)")
    add("--batch-size", type=int, default=8, help="calibration sequences per forward pass (default: %(default)s)")
    add("--hessian-dtype", choices=("float32", "float64"), default="float32",
        help="accumulation dtype of the layer Hessians (default: %(default)s)")
    add("--backend", choices=S.BACKENDS, default="auto", help="layer solver: auto (torch on CUDA, rust on CPU), "
        "rust, torch, reference (default: %(default)s)")
    add("--save", default=None, metavar="DIR", help="write the pruned model here as a Hugging Face directory, "
        "atomically; progress is kept in .DIR.thanos-run beside it, so the same command resumes a killed run "
        "from its last finished block (default: not saved)")
    add("--format", dest="save_format", choices=("dense", "compact"), default="dense", help="--save layout: dense "
        "safetensors, or compact (N:M values + 2-bit positions, bitmask + values for unstructured; load with "
        "thanos_rs.load_pretrained) (default: %(default)s)")
    add("--shrink", action="store_true", help="with --pattern structured and alpha 0: remove the pruned MLP "
        "channels so the saved model has a smaller intermediate_size (default: off)")
    add("--overwrite", action="store_true", help="replace an existing non-empty --save directory, and discard an "
        "unfinished run of a different command there (default: refuse)")
    add("--eval", nargs="+", default=None, metavar="TARGET", help="perplexity on wikitext2 or a .txt/.jsonl file, "
        "and/or lm-eval task names, before and after pruning (default: none; the bundled text for the bundled model)")
    add("--lm-eval-include", default=None, metavar="DIR", help="directory of extra lm-eval task YAMLs (default: none)")
    add("--lm-eval-limit", type=int, default=None, help="examples per lm-eval task (default: all)")
    add("--report", default=None, metavar="FILE", help="write the JSON report here, and a PNG plot of per-layer "
        "loss and sparsity beside it (default: none)")
    add("--quiet", action="store_true", help="no progress bars (default: progress bars on stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bars
    try:
        if args.model is None and args.method is None and args.pattern is None:
            return _demo(args)
        return _prune_one(args)
    except ThanosError as e:
        print(f"error: {e}", file=sys.stderr)
        _say_if_resumable(args.save)
        return 2
    except KeyboardInterrupt:
        _say_if_resumable(args.save)
        return 130


def _say_if_resumable(save: str | None) -> None:
    from .resume import unfinished_run

    root = unfinished_run(save) if save else None
    if root and (root / "state" / "progress.json").is_file():
        print(f"the blocks finished so far are kept in {root}: the same command resumes from there", file=sys.stderr)


def _prune_one(args) -> int:
    from .distributed import init_from_env
    from .model import load_model
    from .pipeline import check_config, prune_model
    from .stream import open_streamed

    config, model_path = _config(args)
    check_config(config)
    world = init_from_env(args.device)
    try:
        load = open_streamed if config.offload == "disk" else load_model
        model, tokenizer = load(model_path, args.dtype, _load_device(args))
        report = prune_model(model, tokenizer, config)
    finally:
        if world.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if not world.main:
        return 0
    print(report.table())
    if report.checkpoint:
        from .export import compact_report

        print(compact_report(config.save).table())
    if config.save:
        print(f"pruned model saved to {config.save}")
    if config.report:
        print(f"report written to {config.report}")
    return 0


def _config(args):
    """PruneConfig from the flags, with the bundled model's defaults when --model is omitted."""
    from .pipeline import PruneConfig

    bundled = args.model is None
    if bundled:
        from . import default_assets

    eval_targets = [t for arg in (args.eval or []) for t in arg.split(",") if t]
    config = PruneConfig(
        method=args.method or "thanos",
        pattern=args.pattern or "unstructured",
        sparsity=args.sparsity,
        alpha=args.alpha,
        block_size=args.block_size,
        damp=args.damp,
        nsamples=args.nsamples if args.nsamples is not None else (DEMO_NSAMPLES if bundled else 128),
        seqlen=args.seqlen if args.seqlen is not None else (DEMO_SEQLEN if bundled else None),
        calib=args.calib or (str(default_assets.default_calibration_file()) if bundled else "c4"),
        seed=args.seed,
        device=args.device,
        offload=args.offload,
        true_sequential=args.true_sequential,
        batch_size=args.batch_size,
        hessian_dtype=args.hessian_dtype,
        backend=args.backend,
        eval=eval_targets or ([str(default_assets.default_eval_file())] if bundled else []),
        lm_eval_include=args.lm_eval_include,
        lm_eval_limit=args.lm_eval_limit,
        save=args.save,
        save_format=args.save_format,
        shrink=args.shrink,
        overwrite=args.overwrite,
        report=args.report,
        progress=not args.quiet,
    )
    model_path = str(default_assets.default_model_dir()) if bundled else args.model
    return config, model_path


def _load_device(args) -> str:
    from .pipeline import resolve_device

    # Models load into host RAM; the pipeline moves one block at a time to the device.
    return str(resolve_device(args.device))


def _demo(args) -> int:
    """Every method x {unstructured 50%, 2:4, structured 30%} on the bundled model, one table."""
    from .data import load_calibration, load_eval_tokens
    from .eval import perplexity
    from .model import load_model
    from .pipeline import check_config, resolve_device

    if args.save:
        raise InputError("--save needs one configuration: add --method or --pattern to prune the bundled model once")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("the comparison demo runs in one process: add --method or --pattern to share one run "
                         "across processes")
    full, model_path = _config(args)
    base = replace(full, report=None, eval=[])
    check_config(base)
    device = resolve_device(base.device)
    model, tokenizer = load_model(model_path, args.dtype, str(device))
    calib = load_calibration(base.calib, tokenizer, base.nsamples, base.seqlen, base.seed)
    tokens = load_eval_tokens(full.eval[0], tokenizer)
    print(f"thanos-rs demo: {model_path}\n"
          f"calibration: {base.nsamples} x {base.seqlen} tokens from {base.calib} (seed {base.seed}); small "
          "defaults so it runs in minutes on a laptop CPU (change with --nsamples/--seqlen)\n"
          f"perplexity: {tokens.input_ids.numel()} tokens of {full.eval[0]} in {base.seqlen}-token windows\n")
    dense = perplexity(model.to(device), tokens, base.seqlen, device)
    rows = [{"method": "dense", "pattern": "-", "sparsity": 0.0, "perplexity": dense, "seconds": 0.0}]
    print(f"{'method':<10} {'pattern':<12} {'sparsity':>8} {'perplexity':>10} {'x dense':>8} {'prune s':>8}")
    print(_format_row(rows[0], dense))
    for pattern, sparsity in DEMO_GRID:
        for method in S.METHODS[::-1]:  # magnitude, wanda, sparsegpt, thanos: weakest first
            config = replace(base, method=method, pattern=pattern, sparsity=sparsity,
                             alpha=args.alpha if method == "thanos" and pattern != "unstructured" else 0.0)
            rows.append(_demo_row(model_path, args.dtype, tokenizer, config, calib, tokens, device))
            print(_format_row(rows[-1], dense))
    if args.report:
        _write_demo_report(args.report, calib, tokens, rows)
    return 0


def _demo_row(model_path, dtype, tokenizer, config, calib, tokens, device) -> dict:
    from .eval import perplexity
    from .model import load_model
    from .pipeline import prune_model

    model, _ = load_model(model_path, dtype, str(device))  # a fresh dense copy for every row
    report = prune_model(model, tokenizer, config, calibration=calib.input_ids)
    ppl = perplexity(model.to(device), tokens, config.seqlen, device)
    return {"method": config.method, "pattern": str(config.pattern), "sparsity": report.sparsity,
            "perplexity": ppl, "seconds": report.seconds}


def _write_demo_report(path: str, calib, tokens, rows: list[dict]) -> None:
    from pathlib import Path

    from .report import write_atomic

    doc = {"protocol": {"calibration": calib.protocol, "evaluation": tokens.protocol}, "rows": rows}
    write_atomic(Path(path), lambda f: f.write(json.dumps(doc, indent=2).encode()))
    print(f"\nreport written to {path}")


def _format_row(row: dict, dense: float) -> str:
    return (f"{row['method']:<10} {row['pattern']:<12} {row['sparsity']:>8.3f} {row['perplexity']:>10.3f} "
            f"{row['perplexity'] / dense:>8.2f} {row['seconds']:>8.1f}")


if __name__ == "__main__":
    sys.exit(main())
