"""1 vs N processes on the CPU: wall time of ``python -m thanos_rs.prune`` alone and under torchrun.

Builds a random-initialised Llama checkpoint (with the bundled model's tokenizer)
in a temporary directory, then prunes it with the command line, calibrated on
the bundled text: once in one process with all the cores' threads, once as N
gloo processes with cores/N threads each. Prints wall seconds and the speedup,
and checks that both outputs have the same masks. Not a test.

    python benches/distributed_bench.py                       # 2 processes, hidden 1024, 4 blocks
    python benches/distributed_bench.py --hidden 2048 --intermediate 5632 --layers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2, help="processes of the torchrun run (default: 2)")
    p.add_argument("--layers", type=int, default=4, help="decoder blocks (default: 4)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size (default: 1024)")
    p.add_argument("--intermediate", type=int, default=2816, help="MLP size (default: 2816)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration sequences (default: 16)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--method", default="thanos", help="pruning method (default: thanos)")
    p.add_argument("--pattern", default="unstructured", help="pruning pattern (default: unstructured)")
    p.add_argument("--hessian-dtype", default="float32", help="Hessian accumulation dtype (default: float32)")
    return p.parse_args(argv)


def build_checkpoint(args, directory: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from thanos_rs import default_assets

    bundled = default_assets.default_model_dir()
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                         vocab_size=2048, max_position_embeddings=max(512, args.seqlen))
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    for name in bundled.glob("tokenizer*"):
        shutil.copy(name, directory)
    shutil.copy(bundled / "special_tokens_map.json", directory)


def timed(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAYON_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def mask_differences(a: Path, b: Path) -> tuple[int, int]:
    """Entries whose zero/non-zero state differs between the two outputs, and all entries."""
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return sum(int(((x[k] == 0) != (y[k] == 0)).sum()) for k in x), sum(t.numel() for t in x.values())


def main(argv=None) -> int:
    args = parse_args(argv)
    from thanos_rs import default_assets

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_checkpoint(args, tmp / "model")
        prune = ["-m", "thanos_rs.prune", "--model", str(tmp / "model"), "--calib",
                 str(default_assets.default_calibration_file()), "--nsamples", str(args.nsamples), "--seqlen",
                 str(args.seqlen), "--batch-size", "2", "--method", args.method, "--pattern", args.pattern,
                 "--hessian-dtype", args.hessian_dtype, "--quiet"]
        one = timed([sys.executable, *prune, "--save", str(tmp / "one")], cores)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={args.processes}"]
        many = timed([*torchrun, *prune, "--save", str(tmp / "many")], max(1, cores // args.processes))
        differ, total = mask_differences(tmp / "one", tmp / "many")
    print(f"Llama hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} blocks; "
          f"{args.method} {args.pattern}; calibration {args.nsamples} x {args.seqlen} tokens; {cores} cores; "
          "wall time of the whole command (load, calibrate, prune, save)")
    print(f"{'processes':>9} {'threads each':>12} {'wall s':>8} {'speedup':>8}")
    print(f"{1:>9} {cores:>12} {one:>8.1f} {1.0:>8.2f}")
    print(f"{args.processes:>9} {max(1, cores // args.processes):>12} {many:>8.1f} {one / many:>8.2f}")
    # Both runs differ in torch's thread count (forward passes) and in the order the Hessian
    # is summed, so near-tied mask entries can flip; tests/test_distributed.py pins one
    # thread and float64 Hessians and gets equal masks.
    print(f"mask entries that differ: {differ} of {total} ({args.hessian_dtype} Hessians; "
          "other thread count and summation order)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
