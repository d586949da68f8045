"""Peak host RAM of ``--offload disk`` vs pruning in RAM (``--offload cpu``), from the same checkpoint.

Writes a random-initialised Llama with TinyLlama-1.1B's dimensions (``--layers``
of its 22 blocks) as sharded safetensors, with the bundled tokenizer, then runs
``python -m thanos_rs.prune`` on it once per mode, each in its own process, and
prints wall time and the child's peak RSS, and whether the two outputs are
byte-identical. Not a test.

    python benches/stream_bench.py                 # 6 blocks
    python benches/stream_bench.py --layers 22     # the whole model (about 4.4 GB of float32 weights)
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
    p.add_argument("--layers", type=int, default=6, help="decoder blocks (TinyLlama: 22; default: 6)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration sequences (default: 16)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per sequence (default: 512)")
    p.add_argument("--method", default="thanos", help="pruning method (default: thanos)")
    p.add_argument("--pattern", default="2:4", help="pruning pattern (default: 2:4)")
    return p.parse_args(argv)


def build_checkpoint(layers: int, directory: Path) -> int:
    """TinyLlama-shaped random weights (vocabulary of the bundled tokenizer); returns their bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from thanos_rs import default_assets

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, vocab_size=2048,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, max_shard_size="1GB")
    bundled = default_assets.default_model_dir()
    for name in [*bundled.glob("tokenizer*"), bundled / "special_tokens_map.json"]:
        shutil.copy(name, directory)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def run(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def same_files(a: Path, b: Path) -> bool:
    """Same tensors: both directories loaded as state dicts (their shard layouts differ)."""
    from transformers import AutoModelForCausalLM

    x = AutoModelForCausalLM.from_pretrained(a).state_dict()
    y = AutoModelForCausalLM.from_pretrained(b).state_dict()
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def main(argv=None) -> int:
    args = parse_args(argv)
    from thanos_rs import default_assets

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        weights = build_checkpoint(args.layers, tmp / "model")
        base = [sys.executable, "-m", "thanos_rs.prune", "--model", str(tmp / "model"), "--calib",
                str(default_assets.default_calibration_file()), "--nsamples", str(args.nsamples), "--seqlen",
                str(args.seqlen), "--method", args.method, "--pattern", args.pattern, "--quiet"]
        rows = []
        for mode in ("cpu", "disk"):
            seconds, peak = run([*base, "--offload", mode, "--save", str(tmp / mode)])
            rows.append((mode, seconds, peak))
        identical = same_files(tmp / "cpu", tmp / "disk")
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
