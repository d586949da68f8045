"""Peak host RAM of ``--offload disk`` vs pruning in RAM (``--offload cpu``), from the same checkpoint.

Writes a random-initialised Llama with TinyLlama-1.1B's dimensions (``--layers``
of its 22 blocks) as sharded safetensors, with the bundled tokenizer, then runs
``python -m thanos_rs.prune`` on it once per mode, each in its own process, and
prints wall time and the child's peak RSS, and whether the two outputs hold the
same tensors. Not a test.

The parent process imports neither torch nor the model: building the checkpoint
and comparing the outputs run in children of their own. On Linux a child's peak
RSS includes what it inherited before exec, so a parent holding the model would
inflate every measurement.

    python benches/stream_bench.py                 # 6 blocks
    python benches/stream_bench.py --layers 22     # the whole model (about 4.4 GB of float32 weights)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6, help="decoder blocks (TinyLlama: 22; default: 6)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration sequences (default: 16)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per sequence (default: 512)")
    p.add_argument("--method", default="thanos", help="pruning method (default: thanos)")
    p.add_argument("--pattern", default="2:4", help="pruning pattern (default: 2:4)")
    p.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # child: write the checkpoint
    p.add_argument("--compare", nargs=2, metavar="DIR", help=argparse.SUPPRESS)  # child: same tensors?
    return p.parse_args(argv)


def build_checkpoint(layers: int, directory: Path) -> None:
    """TinyLlama-shaped random weights (vocabulary of the bundled tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, vocab_size=2048,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, max_shard_size="1GB")
    bundled = package_dir() / "default_model"
    for name in [*bundled.glob("tokenizer*"), bundled / "special_tokens_map.json"]:
        shutil.copy(name, directory)


def package_dir() -> Path:
    """thanos_rs's directory, found without importing it (its import loads torch)."""
    return Path(importlib.util.find_spec("thanos_rs").submodule_search_locations[0])


def run(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def same_tensors(a: Path, b: Path) -> bool:
    """Both directories loaded as state dicts (their shard layouts differ)."""
    from transformers import AutoModelForCausalLM

    x = AutoModelForCausalLM.from_pretrained(a).state_dict()
    y = AutoModelForCausalLM.from_pretrained(b).state_dict()
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build:
        build_checkpoint(args.layers, Path(args.build))
        return 0
    if args.compare:
        return 0 if same_tensors(*map(Path, args.compare)) else 1
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, __file__, "--layers", str(args.layers), "--build", str(tmp / "model")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        weights = sum(p.stat().st_size for p in (tmp / "model").glob("*.safetensors"))
        calib = package_dir() / "default_data" / "train.txt"
        base = [sys.executable, "-m", "thanos_rs.prune", "--model", str(tmp / "model"), "--calib",
                str(calib), "--nsamples", str(args.nsamples), "--seqlen",
                str(args.seqlen), "--method", args.method, "--pattern", args.pattern, "--quiet"]
        rows = []
        for mode in ("cpu", "disk"):
            seconds, peak = run([*base, "--offload", mode, "--save", str(tmp / mode)])
            rows.append((mode, seconds, peak))
        compare = [sys.executable, __file__, "--compare", str(tmp / "cpu"), str(tmp / "disk")]
        identical = subprocess.run(compare, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    print(f"Llama hidden 2048, intermediate 5632, heads 32/4 (TinyLlama-1.1B), {args.layers} of its 22 blocks, "
          f"{weights / 2**30:.2f} GiB of float32 weights; {args.method} {args.pattern}; calibration "
          f"{args.nsamples} x {args.seqlen} tokens; CPU; each mode in its own process")
    print(f"{'offload':<8} {'wall s':>8} {'peak RSS GiB':>13}")
    for mode, seconds, peak in rows:
        print(f"{mode:<8} {seconds:>8.1f} {peak / 2**30:>13.2f}")
    print(f"pruned weights identical: {'yes' if identical else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
