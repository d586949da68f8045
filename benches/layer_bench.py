"""Layer benchmark: seconds per method x pattern x backend on Llama-7B layer shapes.

For each layer shape (c, b) = (out, in) it builds float32 weights ~ N(0, 0.02) and a realistic
H = 2 X X^T / n (n = b heavy-tailed tokens, seeded), then times `prune_layer` for every method,
pattern and backend, plus Thanos "as published" (re-inverting the trailing H every block,
`torch_kernels.prune_as_published`) as the reference. Not a test: it prints numbers.

Columns: `seconds` is `LayerResult.seconds` (kernel time, no loss computation), the median over
`--repeat` runs, taken in rounds (each method and backend once per round). Every "x" column
is a time ratio, this row's seconds / the reference's (< 1 = faster): vs as-published Thanos (same shape, pattern and device; "~" where that run was
skipped and its time extrapolated), vs SparseGPT (same shape, pattern and backend), and vs the
flop bound `(1.3 b^3 + c b^2) / R`, R = the float32 GEMM rate of torch measured here (a
4096 x 4096 @ 4096 x 4096 matmul, best of 3; faer's rate is not reachable from Python).
On CUDA `.seconds` stops without a device sync, so it can miss the last queued kernels.
The mask check compares as-published Thanos with every Thanos backend: the two compute the same
trailing inverses by different float32 arithmetic, so a near-tie can flip a few entries (a
256x768 2:4 run differs in one group of 4 in float32 and not at all in float64).
Below the table, the work the Rust kernels of Thanos and SparseGPT do beyond what they share,
counted from their masks (`extra_work`), and what the difference would take at the measured GEMM
rate: an estimate (not a bound) of the gap that remains if both ran their extra work as fast as
a large GEMM.

    python benches/layer_bench.py                                   # Llama-7B shapes: many minutes
    python benches/layer_bench.py --shapes 512x512,256x768          # smoke run, well under a minute
    python benches/layer_bench.py --methods thanos,sparsegpt --patterns 2:4 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

LLAMA_7B_SHAPES = "4096x4096,11008x4096,4096x11008"
METHODS = ("thanos", "sparsegpt", "wanda", "magnitude")
BACKENDS = ("rust", "torch")
SPARSITY = {"unstructured": 0.5, "structured": 0.3}  # N:M patterns fix their own sparsity
PUBLISHED = "thanos (as published)"
BLOCK, DAMP = 128, 0.01
GEMM_N = 4096
TOKEN_CHUNK = 1024  # tokens per X chunk: X (b x n) is never held whole (485 MB at b = n = 11008)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=LLAMA_7B_SHAPES, help=f"comma-separated CxB (default: {LLAMA_7B_SHAPES})")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all four)")
    p.add_argument("--patterns", default="unstructured,2:4,structured",
                   help="comma-separated; unstructured is 50%%, structured 30%% (default: all three)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: rust, torch (default: both)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case; the median is reported (default: 1)")
    p.add_argument("--threads", type=int, help="torch threads and RAYON_NUM_THREADS (default: the libraries' own)")
    p.add_argument("--published-max-b", type=int, default=4096,
                   help="run as-published Thanos only where b <= this; 0 never (default: 4096)")
    p.add_argument("--json", metavar="FILE", help="also write the machine and rows as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of W and H (default: 0)")
    p.add_argument("--sigma", type=float, default=1.25, help="feature scales exp(N(0, sigma)) (default: 1.25)")
    args = p.parse_args(argv)
    args.shapes = [parse_shape(s, p) for s in split(args.shapes)]
    args.methods = checked(split(args.methods), METHODS, "method", p)
    args.backends = checked(split(args.backends), BACKENDS, "backend", p)
    args.patterns = split(args.patterns)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def checked(values: list[str], allowed: tuple[str, ...], what: str, p: argparse.ArgumentParser) -> list[str]:
    for v in values:
        if v not in allowed:
            p.error(f"unknown {what} {v!r}: choose from {', '.join(allowed)}")
    return values


def parse_shape(text: str, p: argparse.ArgumentParser) -> tuple[int, int]:
    try:
        c, b = (int(x) for x in text.lower().split("x"))
    except ValueError:
        p.error(f"shape must be CxB like 4096x11008, got {text!r}")
    if c < 1 or b < 1:
        p.error(f"shape must be positive, got {text!r}")
    return c, b


# ---- machine --------------------------------------------------------------------------------


def timed(fn, device: str):
    """(fn(), wall seconds), synchronising CUDA so queued kernels are counted."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def gemm_rate(device: str) -> float:
    """Best-of-3 float32 GEMM rate of torch on `device`, in flop/s: the flop bound's yardstick."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(GEMM_N, GEMM_N, generator=gen).to(device) for _ in range(2))
    timed(lambda: a @ b, device)  # warm-up: thread pools, cuBLAS handles
    best = min(timed(lambda: a @ b, device)[1] for _ in range(3))
    return 2 * GEMM_N**3 / best


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def describe_machine(devices: list[str]) -> dict:
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "default"),
        "gemm_flops": {d: gemm_rate(d) for d in devices},
    }
    if "cuda" in devices:
        machine["gpu"] = torch.cuda.get_device_name()
    return machine


# ---- inputs ---------------------------------------------------------------------------------


def make_hessian(b: int, seed: int, sigma: float) -> torch.Tensor:
    """H = 2 X X^T / n (float32, exactly symmetric) for n = b tokens X = D Z, Z standard normal.

    D scales feature j by exp(N(0, sigma)) and a few outlier features by another 10-100x, the
    heavy tails of LLM activations. Z Z^T is summed over token chunks, and D is applied to the
    b x b sum (D Z Z^T D), so X itself is never materialised.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
    scale = torch.exp(sigma * torch.randn(b, generator=gen))
    outliers = torch.randperm(b, generator=gen)[: max(2, b // 1024)]
    scale[outliers] *= 10 ** (1 + torch.rand(len(outliers), generator=gen))  # log-uniform in [10, 100]
    zz = torch.zeros(b, b)
    for start in range(0, b, TOKEN_CHUNK):
        z = torch.randn(b, min(TOKEN_CHUNK, b - start), generator=gen)
        zz.addmm_(z, z.T)
    # zz + zz^T is the "2" of 2 X X^T and exactly symmetric (a GEMM's Z Z^T need not be), as is
    # the outer product s s^T: the kernels read one triangle of H and the loss reads all of it.
    return (zz + zz.T).mul_(torch.outer(scale, scale)).div_(b)


def make_weight(c: int, b: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + c * 100_003 + b)
    return 0.02 * torch.randn(c, b, generator=gen)


# ---- runs -----------------------------------------------------------------------------------


def sparsity_of(pattern: str) -> float:
    return SPARSITY.get(pattern, 0.5)


def warm_up(backends: list[tuple[str, str]]) -> None:
    """One tiny prune per backend so one-time start-up (rayon pool, torch/CUDA init) is not timed."""
    from thanos_rs import prune_layer

    w, h = make_weight(64, 64, 0), make_hessian(64, 0, 1.0)
    for backend, device in backends:
        prune_layer(w.to(device), h.to(device), "thanos", "unstructured", 0.5, 0.0, BLOCK, DAMP, backend)


def run_method(w, h, method: str, pattern: str, backend: str):
    """One prune_layer run."""
    from thanos_rs import prune_layer

    return prune_layer(w, h, method, pattern, sparsity_of(pattern), 0.0, BLOCK, DAMP, backend)


def run_published(w, h, pattern: str, device: str, repeat: int):
    """Thanos as published: (median seconds, loss, sparsity, damp, mask)."""
    from thanos_rs import layer_loss, spec, torch_kernels

    sp = spec.make_spec("thanos", pattern, sparsity_of(pattern), 0.0, BLOCK, DAMP)
    # the clones are timed, as prune_layer's torch backend times its own
    runs = [timed(lambda: torch_kernels.prune_as_published(w.clone(), h.clone(), sp), device) for _ in range(repeat)]
    (w_new, mask, damp), _ = runs[-1]
    seconds = statistics.median(t for _, t in runs)
    return seconds, layer_loss(w, w_new, h), mask.float().mean().item(), damp, mask


def row(shape, method, pattern, backend, device, seconds, loss=None, sparsity=None, damp=None) -> dict:
    c, b = shape
    return dict(shape=f"{c}x{b}", c=c, b=b, method=method, pattern=pattern, backend=backend, device=device,
                seconds=seconds, loss=loss, sparsity=sparsity, damp=damp)


def progress(start: float, r: dict) -> None:
    took = "skipped" if r["seconds"] is None else f"{r['seconds']:.3g} s"
    print(f"[{time.perf_counter() - start:7.1f} s] {r['shape']} {r['method']} {r['pattern']} {r['backend']}"
          f" ({r['device']}): {took}", file=sys.stderr, flush=True)


def bench_shape(args, shape, h, devices, start):
    """All rows of one shape, and the as-published vs Thanos mask comparisons."""
    c, b = shape
    w = make_weight(c, b, args.seed)
    inputs = {d: (w.to(d), h.to(d)) for d in set(devices.values())}
    rows, checks = [], []
    for pattern in args.patterns:
        published = {}  # device -> mask of the as-published run, compared with every Thanos backend
        if pattern != "structured" and args.published_max_b > 0:
            for device in sorted(set(devices.values())):
                if b <= args.published_max_b:
                    seconds, loss, spars, damp, published[device] = run_published(*inputs[device], pattern, device,
                                                                                  args.repeat)
                    rows.append(row(shape, PUBLISHED, pattern, "torch", device, seconds, loss, spars, damp))
                else:
                    rows.append(row(shape, PUBLISHED, pattern, "torch", device, None))
                progress(start, rows[-1])
        cases = [(method, backend) for method in args.methods for backend in args.backends]
        seconds, last = {case: [] for case in cases}, {}
        # In rounds, every case once per round: the VM's speed drifts over minutes, and a drift
        # then slows every case of a round alike instead of skewing the ratios between them.
        for _ in range(args.repeat):
            for method, backend in cases:
                last[method, backend] = run_method(*inputs[devices[backend]], method, pattern, backend)
                seconds[method, backend].append(last[method, backend].seconds)
        for method, backend in cases:
            res, device = last[method, backend], devices[backend]
            rows.append(row(shape, method, pattern, backend, device, statistics.median(seconds[method, backend]),
                            res.loss, res.sparsity, res.damp))
            rows[-1]["extra_work"] = extra_work(method, pattern, res.mask, BLOCK) if backend == "rust" else None
            progress(start, rows[-1])
            if method != "thanos":
                continue
            for pub_device, pub_mask in published.items():
                differing = int((pub_mask.cpu() != res.mask.cpu()).sum())
                checks.append(dict(shape=f"{c}x{b}", pattern=pattern, published_device=pub_device,
                                   backend=backend, differing=differing))
    return rows, checks


def extra_work(method: str, pattern: str, mask: torch.Tensor, block: int) -> dict | None:
    """Multiply-adds the Rust kernels of a method do beyond the work Thanos and SparseGPT share,
    counted from its mask.

    Shared: the factor of H and, per block, the GEMM that updates the columns right of it. Thanos
    adds the block's rows of the trailing inverse (`R = U_blk^T U[i1:i2, i1:]`, `bw^2 (b - i1)`),
    every row's `G[Q,Q]` solve (`s^3/6 + s^2` for s = |Q|: Cholesky, two triangular solves; the
    padding of a batch of 16 rows to its largest s is not counted) and the block's own columns in
    its update GEMM (`c bw^2`); SparseGPT adds its in-block OBS loop (per pruned entry, one update
    of the block's later columns). Structured pruning is the same joint solve for both: none.
    """
    from thanos_rs import spec

    if pattern == "structured" or method not in ("thanos", "sparsegpt"):
        return None
    c, b = mask.shape
    block = spec.make_spec(method, pattern, sparsity_of(pattern), 0.0, block, DAMP).block_for(b)
    pruned = mask.cpu().to(torch.float64)
    starts = range(0, b, block)
    if method == "thanos":
        counts = [pruned[:, i:i + block].sum(1) for i in starts]
        return {"R": float(sum(min(block, b - i) ** 2 * (b - i) for i in starts)),
                "solves": sum(float((s ** 3 / 6 + s ** 2).sum()) for s in counts),
                "block columns": float(sum(c * min(block, b - i) ** 2 for i in starts))}
    later = torch.tensor([min(block, b - j + j % block) - 1 - j % block for j in range(b)], dtype=torch.float64)
    return {"in-block loop": float((pruned.sum(0) * later).sum())}


# ---- derived columns and output -------------------------------------------------------------


def extrapolate_published(rows: list[dict]) -> None:
    """Skipped as-published runs: est_seconds = t_ref (b / b_ref)^4 from the largest measured b.

    The b^4/B inversions dominate that variant, so its other terms are ignored.
    """
    measured = [r for r in rows if r["method"] == PUBLISHED and r["seconds"] is not None]
    for r in rows:
        if r["method"] != PUBLISHED or r["seconds"] is not None:
            continue
        refs = [m for m in measured if (m["pattern"], m["device"]) == (r["pattern"], r["device"])]
        if refs:
            ref = max(refs, key=lambda m: m["b"])
            r["est_seconds"] = ref["seconds"] * (r["b"] / ref["b"]) ** 4


def add_ratios(rows: list[dict], gemm_flops: dict) -> None:
    """The "x" columns: this row's seconds over each reference's (None where it has none)."""
    for r in rows:
        r["bound_s"] = (1.3 * r["b"] ** 3 + r["c"] * r["b"] ** 2) / gemm_flops[r["device"]]
        pub = find(rows, PUBLISHED, r, ("shape", "pattern", "device"))
        pub_s = None if pub is None else pub["seconds"] or pub.get("est_seconds")
        sgpt = find(rows, "sparsegpt", r, ("shape", "pattern", "backend", "device"))
        r["published_estimated"] = pub is not None and pub["seconds"] is None and pub_s is not None
        r["x_published"] = ratio(r["seconds"], pub_s)
        r["x_sparsegpt"] = ratio(r["seconds"], sgpt and sgpt["seconds"])
        r["x_bound"] = ratio(r["seconds"], r["bound_s"])


def find(rows: list[dict], method: str, r: dict, same: tuple[str, ...]) -> dict | None:
    """The first row of `method` that agrees with row r on the keys `same`."""
    return next((o for o in rows if o["method"] == method and all(o[k] == r[k] for k in same)), None)


def ratio(num, den):
    return num / den if num is not None and den else None


def num(x, digits: int = 3) -> str:
    """Compact: 3 significant digits, but no exponent for large values."""
    if x is None:
        return "-"
    return f"{x:.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"


def pattern_label(pattern: str) -> str:
    return f"{pattern} {sparsity_of(pattern):.0%}" if pattern in SPARSITY else pattern


def seconds_cell(r: dict) -> str:
    if r["seconds"] is not None:
        return num(r["seconds"])
    if "est_seconds" in r:
        return f"skipped (est. {num(r['est_seconds'])} s)"
    return "skipped (no measured run to extrapolate from)"


def table_line(r: dict) -> str:
    backend = r["backend"] if r["device"] == "cpu" else f"{r['backend']} ({r['device']})"
    x_pub = num(r["x_published"])
    if r["published_estimated"] and r["x_published"] is not None:
        x_pub = "~" + x_pub
    cells = [r["shape"], r["method"], pattern_label(r["pattern"]), backend, seconds_cell(r), x_pub,
             num(r["x_sparsegpt"]), num(r["bound_s"]), num(r["x_bound"]),
             "-" if r["loss"] is None else f"{r['loss']:.4g}",
             "-" if r["sparsity"] is None else f"{r['sparsity']:.4f}"]
    return "| " + " | ".join(cells) + " |"


def print_report(machine: dict, rows: list[dict], checks: list[dict]) -> None:
    rates = ", ".join(f"{d} {f / 1e9:.0f} GFLOP/s" for d, f in machine["gemm_flops"].items())
    print(f"CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable)"
          + (f"; GPU: {machine['gpu']}" if "gpu" in machine else ""))
    print(f"torch {machine['torch']} ({machine['torch_threads']} threads), "
          f"RAYON_NUM_THREADS={machine['rayon_threads']}")
    print(f"float32 GEMM rate (torch, {GEMM_N}^3 matmul, best of 3): {rates}")
    print(f"flop bound = (1.3 b^3 + c b^2) / GEMM rate; block {BLOCK}, damp {DAMP}; "
          "x columns = seconds / reference seconds (< 1 = faster)\n")
    print("| shape | method | pattern | backend | seconds | x vs as-published | x vs SparseGPT "
          "| flop bound (s) | x of bound | loss | sparsity |")
    print("|" + " --- |" * 11)
    for r in rows:
        print(table_line(r))
    if checks:
        print()
    for k in checks:
        verdict = "yes" if k["differing"] == 0 else "no"
        print(f"masks identical ({k['shape']}, {k['pattern']}, as published on {k['published_device']} vs "
              f"thanos {k['backend']}): {verdict} ({k['differing']} differing entries)")
    work = work_lines(rows, machine["gemm_flops"])
    if work:
        print("\nWork of the Rust kernels beyond what Thanos and SparseGPT share (the factor and each block's "
              "trailing GEMM), counted from the masks, in billions of multiply-adds; the difference at the GEMM "
              "rate is an estimate of the gap if all of it ran as fast as a large GEMM:")
        print("\n".join(work))


def work_lines(rows: list[dict], gemm_flops: dict) -> list[str]:
    """Per shape and pattern with a Thanos and a SparseGPT Rust row: their extra work, and what
    Thanos's minus SparseGPT's takes at the measured GEMM rate, as a share of SparseGPT's time."""
    lines = []
    for t in rows:
        if t["method"] != "thanos" or not t.get("extra_work"):
            continue
        s = find(rows, "sparsegpt", t, ("shape", "pattern", "backend", "device"))
        if s is None or not s.get("extra_work"):
            continue
        tw, sw = sum(t["extra_work"].values()), sum(s["extra_work"].values())
        parts = ", ".join(f"{k} {num(v / 1e9)}" for k, v in t["extra_work"].items())
        diff_s = 2 * (tw - sw) / gemm_flops[t["device"]]
        share = f", {diff_s / s['seconds']:.0%} of SparseGPT's {num(s['seconds'])} s" if s["seconds"] else ""
        lines.append(f"- {t['shape']} {pattern_label(t['pattern'])} ({t['backend']}): thanos {num(tw / 1e9)} "
                     f"({parts}), sparsegpt {num(sw / 1e9)}; the difference takes {num(diff_s)} s at the GEMM "
                     f"rate{share}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        # rayon sizes its pool from this when thanos_rs._core first runs: set it before any import of it
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    devices = {"rust": "cpu", "torch": torch_device}
    devices = {k: v for k, v in devices.items() if k in args.backends}
    machine = describe_machine(sorted(set(devices.values()) | {"cpu"}))
    warm_up(list(devices.items()))

    start = time.perf_counter()
    rows, checks, h_b, h = [], [], None, None
    for shape in args.shapes:
        if shape[1] != h_b:  # shapes with the same b share H; hold only one at a time
            h = None  # free the old H before building the next (485 MB at b = 11008)
            h_b, h = shape[1], make_hessian(shape[1], args.seed, args.sigma)
        shape_rows, shape_checks = bench_shape(args, shape, h, devices, start)
        rows += shape_rows
        checks += shape_checks
    extrapolate_published(rows)
    add_ratios(rows, machine["gemm_flops"])

    print_report(machine, rows, checks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows, "mask_checks": checks}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
