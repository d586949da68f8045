"""End-to-end benchmark: prune a random-initialised Llama of TinyLlama-1.1B shape on the CPU.

Wall time and peak host RSS of ``prune_model`` per method, on ``nsamples x seqlen``
random calibration tokens (default 16 x 512). Each method runs in a fresh child
process, so its peak RSS is its own. Not a test: on a 2-core machine a full
22-layer run takes long, so ``--layers`` prunes fewer blocks (the table says how
many); per-block cost is the same for every block.

    python benches/e2e_bench.py --layers 2
    python benches/e2e_bench.py --layers 1 --hidden 256 --intermediate 704 --seqlen 64   # smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ("magnitude", "wanda", "sparsegpt", "thanos")
TINYLLAMA = dict(hidden=2048, intermediate=5632, heads=32, kv_heads=4, layers=22, vocab=32000)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=TINYLLAMA["layers"], help="decoder blocks (TinyLlama: 22)")
    p.add_argument("--hidden", type=int, default=TINYLLAMA["hidden"], help="hidden size (TinyLlama: 2048)")
    p.add_argument("--intermediate", type=int, default=TINYLLAMA["intermediate"], help="MLP size (TinyLlama: 5632)")
    p.add_argument("--heads", type=int, default=TINYLLAMA["heads"], help="attention heads (TinyLlama: 32)")
    p.add_argument("--kv-heads", type=int, default=TINYLLAMA["kv_heads"], help="KV heads (TinyLlama: 4)")
    p.add_argument("--vocab", type=int, default=TINYLLAMA["vocab"], help="vocabulary (TinyLlama: 32000)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration sequences (default: 16)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per sequence (default: 512)")
    p.add_argument("--pattern", default="unstructured", help="pruning pattern (default: unstructured)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to time (default: all)")
    p.add_argument("--backend", default="auto", help="layer solver backend (default: auto = rust on CPU)")
    p.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # child process: run one method
    return p.parse_args(argv)


def build_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=max(2048, args.seqlen))
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def run_one(args) -> dict:
    """Child process: build, prune with one method, report time and this process's peak RSS."""
    import torch

    from thanos_rs.pipeline import PruneConfig, prune_model

    model = build_model(args)
    calibration = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    config = PruneConfig(method=args.one, pattern=args.pattern, device="cpu", backend=args.backend, progress=False)
    start = time.perf_counter()
    report = prune_model(model, None, config, calibration=calibration)
    wall = time.perf_counter() - start
    return {
        "method": args.one,
        "wall_s": wall,
        "solve_s": report.totals()["solve_seconds"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "sparsity": report.sparsity,
        "mean_loss": report.totals()["mean_loss"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    shared = ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "nsamples", "seqlen",
              "pattern", "backend")
    forwarded = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in shared]
    print(f"Llama hidden {args.hidden}, intermediate {args.intermediate}, heads {args.heads}/{args.kv_heads}, "
          f"{args.layers} of TinyLlama's 22 layers, vocab {args.vocab}; calibration {args.nsamples} x {args.seqlen} "
          f"tokens; pattern {args.pattern}; CPU")
    print(f"{'method':<10} {'wall s':>8} {'solve s':>8} {'peak RSS GiB':>12} {'sparsity':>8} {'mean loss':>10}")
    for method in args.methods:
        child = subprocess.run([sys.executable, __file__, *forwarded, "--one", method],
                               capture_output=True, text=True, check=False)
        if child.returncode != 0:
            print(f"{method:<10} failed:\n{child.stderr}", file=sys.stderr)
            return 1
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{r['method']:<10} {r['wall_s']:>8.1f} {r['solve_s']:>8.1f} {r['peak_rss_gib']:>12.2f} "
              f"{r['sparsity']:>8.3f} {r['mean_loss']:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
