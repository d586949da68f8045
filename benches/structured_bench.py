"""Structured export on the CPU: latency of the exported layers and of a whole model vs dense.

Layers: Llama-shaped float32 weights (q/o: h x h, gate/up: I x h, down: h x I) with
``s = ceil(p b / (1 - alpha))`` input columns zeroed in all but ``ceil(alpha c)`` rows (the
Thanos structured pattern), timed as the dense ``nn.Linear`` and as
``shrink.split_structured``'s module on ``--tokens`` tokens.

Model: a random Llama, every decoder linear magnitude-structured-pruned at p (alpha 0), then
``shrink_mlp`` (smaller intermediate_size) and ``export_structured`` (narrower attention and
gate/up inputs); one forward of ``--batch x --tokens`` tokens. ``max |dlogit|`` checks the
exported model against the pruned dense one.

Every time is the best of ``--repeat`` runs after one warm-up (on a shared machine the least
disturbed run is the reproducible one); ``ratio`` = exported / dense (< 1 = faster). Not a test:
it prints numbers. On a busy machine pass ``--threads 1``: idle-waiting worker threads distort
sub-millisecond matmuls.

    python benches/structured_bench.py --small                      # well under a minute
    python benches/structured_bench.py --threads 2                  # hidden 2048: a few minutes
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from thanos_rs import prune_layer, shrink
from thanos_rs.model import weight_matrix
from thanos_rs.sparse24 import decoder_linears

SMALL = dict(hidden=512, intermediate=1376, layers=2, heads=8, tokens=128, repeat=5)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2048, help="hidden size h (default: %(default)s)")
    p.add_argument("--intermediate", type=int, default=5504, help="MLP size I (default: %(default)s)")
    p.add_argument("--layers", type=int, default=4, help="decoder blocks of the model (default: %(default)s)")
    p.add_argument("--heads", type=int, default=16, help="attention heads (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=256, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="sequences per model forward (default: %(default)s)")
    p.add_argument("--sparsities", default="0.3,0.5", help="structured sparsities p (default: %(default)s)")
    p.add_argument("--alphas", default="0,0.05", help="outlier-row fractions of the layer rows (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per case, the best is kept (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--small", action="store_true", help=f"a quick run: {SMALL}")
    args = p.parse_args(argv)
    if args.small:
        for key, value in SMALL.items():
            setattr(args, key.replace("-", "_"), value)
    return args


@torch.no_grad()
def best_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def structured_linear(c: int, b: int, p: float, alpha: float, gen: torch.Generator) -> torch.nn.Linear:
    linear = torch.nn.Linear(b, c, bias=False)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02, generator=gen)
        removed = torch.randperm(b, generator=gen)[: min(b, math.ceil(p * b / (1 - alpha) - 1e-9))]
        rows = torch.randperm(c, generator=gen)[math.ceil(alpha * c - 1e-9):]
        linear.weight[rows[:, None], removed] = 0.0
    return linear


def layer_table(args, sparsities, alphas) -> None:
    h, inter = args.hidden, args.intermediate
    shapes = {"q/o (h x h)": (h, h), "gate/up (I x h)": (inter, h), "down (h x I)": (h, inter)}
    gen = torch.Generator().manual_seed(0)
    print(f"layers: {args.tokens} tokens, float32, {torch.get_num_threads()} threads")
    print(f"{'layer':<16} {'p':>5} {'alpha':>6} {'dense ms':>9} {'export ms':>10} {'ratio':>6}  module")
    for label, (c, b) in shapes.items():
        x = torch.randn(args.tokens, b, generator=gen)
        for p in sparsities:
            for alpha in alphas:
                dense = structured_linear(c, b, p, alpha, gen)
                exported = shrink.split_structured(label, dense)
                t_dense = best_seconds(lambda: dense(x), args.repeat)
                t_export = best_seconds(lambda: exported(x), args.repeat)
                print(f"{label:<16} {p:>5.2f} {alpha:>6.2f} {t_dense * 1e3:>9.2f} {t_export * 1e3:>10.2f} "
                      f"{t_export / t_dense:>6.2f}  {type(exported).__name__}")


def random_llama(args):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=1024,
        max_position_embeddings=max(2048, args.tokens))
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@torch.no_grad()
def structured_prune(model, p: float) -> None:
    """Magnitude structured pruning (no calibration needed: its scores ignore H)."""
    for module in decoder_linears(model).values():
        w = weight_matrix(module)
        eye = torch.eye(w.shape[1])
        w.copy_(prune_layer(w, eye, method="magnitude", pattern="structured", sparsity=p, backend="torch").weight)


def model_table(args, sparsities) -> None:
    ids = torch.randint(0, 1024, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    dense = random_llama(args)

    def forward(model):
        return lambda: model(input_ids=ids, use_cache=False)

    t_dense = best_seconds(forward(dense), args.repeat)
    print(f"\nmodel: Llama h={args.hidden} I={args.intermediate} x {args.layers} blocks, "
          f"{args.batch} x {args.tokens} tokens, float32")
    print(f"{'p':>5} {'new I':>6} {'dense ms':>9} {'export ms':>10} {'ratio':>6} {'max |dlogit|':>13}")
    for p in sparsities:
        model = random_llama(args)
        structured_prune(model, p)
        with torch.no_grad():
            expected = model(input_ids=ids, use_cache=False).logits
        shrink.shrink_mlp(model)
        shrink.export_structured(model)
        with torch.no_grad():
            diff = (model(input_ids=ids, use_cache=False).logits - expected).abs().max().item()
        t_export = best_seconds(forward(model), args.repeat)
        print(f"{p:>5.2f} {model.config.intermediate_size:>6} {t_dense * 1e3:>9.1f} {t_export * 1e3:>10.1f} "
              f"{t_export / t_dense:>6.2f} {diff:>13.2e}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
    layer_table(args, sparsities, alphas)
    model_table(args, sparsities)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
