"""2:4 sparse tensor cores vs dense on the GPU, float16: Llama-7B MLP matmuls and a whole model.

MLP matmuls: the Llama-7B MLP shapes (gate/up 11008 x 4096, down 4096 x 11008), weights
magnitude-pruned to 2:4, ``F.linear`` on the dense weight vs on its
``torch.sparse.to_sparse_semi_structured`` form, at 2048 tokens (prefill) and 32 / 8 / 1 tokens
(decode).

Model: a random Llama-7B-shaped model (h 4096, I 11008, 32 heads; ``--layers`` blocks, 32 by
default), every decoder linear magnitude-pruned to 2:4, then ``thanos_rs.sparse24.to_semi_structured``:
prefill of 1 x ``--prefill`` tokens, and one decode step at batch 1, 8 and 32 on a KV cache of
``--context`` tokens. ``max |dlogit|`` compares the sparse model's prefill logits with the dense one's.

Times are CUDA-event milliseconds, the median of ``--repeat`` runs after warm-up; ``speed-up`` is
dense / 2:4. Without CUDA (or on a GPU older than Ampere) it prints why and exits 0.

    python benches/infer_bench.py                      # about 14 GB of GPU memory, a few minutes
    python benches/infer_bench.py --layers 4 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

MLP_SHAPES = {"gate/up (11008 x 4096)": (11008, 4096), "down (4096 x 11008)": (4096, 11008)}
TOKENS = (2048, 32, 8, 1)
DECODE_BATCHES = (1, 8, 32)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32, help="decoder blocks of the model (default: %(default)s)")
    p.add_argument("--prefill", type=int, default=2048, help="prefill tokens (default: %(default)s)")
    p.add_argument("--context", type=int, default=512,
                   help="KV-cache tokens before a decode step (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per case (default: %(default)s)")
    return p.parse_args(argv)


def skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False); 2:4 sparse kernels are GPU-only"
    if torch.cuda.get_device_capability() < (8, 0):
        return f"{torch.cuda.get_device_name()} is older than Ampere (sm_80); it has no 2:4 sparse tensor cores"
    return None


@torch.no_grad()
def cuda_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def magnitude_24(w: torch.Tensor) -> None:
    """Zero the 2 smallest |w| of every 4 consecutive inputs, in place."""
    groups = w.view(w.shape[0], -1, 4)
    groups.scatter_(-1, groups.abs().argsort(-1)[..., :2], 0.0)


def mlp_table(repeat: int) -> None:
    print(f"MLP matmuls, float16, {torch.cuda.get_device_name()}")
    print(f"{'layer':<24} {'tokens':>6} {'dense ms':>9} {'2:4 ms':>8} {'speed-up':>9} {'2:4 TFLOP/s':>12}")
    for label, (c, b) in MLP_SHAPES.items():
        w = torch.randn(c, b, device="cuda", dtype=torch.float16) * 0.02
        magnitude_24(w)
        sparse = torch.sparse.to_sparse_semi_structured(w)
        for tokens in TOKENS:
            x = torch.randn(tokens, b, device="cuda", dtype=torch.float16)
            t_dense = cuda_ms(lambda: F.linear(x, w), repeat)
            t_sparse = cuda_ms(lambda: F.linear(x, sparse), repeat)
            tflops = 2 * tokens * c * b / (t_sparse * 1e-3) / 1e12
            print(f"{label:<24} {tokens:>6} {t_dense:>9.3f} {t_sparse:>8.3f} {t_dense / t_sparse:>9.2f} "
                  f"{tflops:>12.1f}")


def llama_7b(layers: int):
    import transformers

    config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                      max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
    from thanos_rs.sparse24 import decoder_linears

    for module in decoder_linears(model).values():
        magnitude_24(module.weight.data)
    return model


@torch.no_grad()
def model_times(model, args) -> dict[str, float]:
    """Prefill ms and one decode step's ms per batch size."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, 32000, (1, args.prefill), device="cuda", generator=gen)
    times = {"prefill": cuda_ms(lambda: model(input_ids=ids, use_cache=False), args.repeat)}
    for batch in DECODE_BATCHES:
        context = torch.randint(0, 32000, (batch, args.context), device="cuda", generator=gen)
        out = model(input_ids=context, use_cache=True)
        key = "cache" if "cache" in out else "past_key_values"  # transformers >= 5.2x renamed it
        cache = {key: out[key]}
        step = torch.randint(0, 32000, (batch, 1), device="cuda", generator=gen)
        # Each timed step appends one token to the cache: the context grows by repeat + 3, negligibly.
        times[f"decode b{batch}"] = cuda_ms(lambda: model(input_ids=step, use_cache=True, **cache), args.repeat)
    return times


def model_table(args) -> None:
    from thanos_rs.sparse24 import to_semi_structured

    model = llama_7b(args.layers)
    ids = torch.randint(0, 32000, (1, 256), device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits.float()
    dense = model_times(model, args)
    to_semi_structured(model)
    with torch.no_grad():
        diff = (model(input_ids=ids, use_cache=False).logits.float() - expected).abs().max().item()
    sparse = model_times(model, args)
    print(f"\nLlama-7B-shaped model ({args.layers} blocks), float16, magnitude 2:4; "
          f"decode on a {args.context}-token cache; max |dlogit| 2:4 vs dense: {diff:.3g}")
    print(f"{'case':<12} {'dense ms':>9} {'2:4 ms':>8} {'speed-up':>9} {'dense tok/s':>12} {'2:4 tok/s':>10}")
    for case, t_dense in dense.items():
        tokens = args.prefill if case == "prefill" else int(case.removeprefix("decode b"))
        t_sparse = sparse[case]
        print(f"{case:<12} {t_dense:>9.2f} {t_sparse:>8.2f} {t_dense / t_sparse:>9.2f} "
              f"{tokens / t_dense * 1e3:>12.0f} {tokens / t_sparse * 1e3:>10.0f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"infer_bench: skipped: {reason}")
        return 0
    mlp_table(args.repeat)
    model_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
