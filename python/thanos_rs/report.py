"""What a pruning run did, in a form people (a table) and programs (JSON, a plot) can read.

The JSON and the PNG are written atomically (a temporary file beside the
target, then a rename), so a crashed run never leaves a half-written report.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = ["LayerRecord", "PruneReport", "peak_memory", "save_tensors_atomic", "versions",
           "write_atomic"]


@dataclass
class LayerRecord:
    """One pruned linear layer; ``shape`` is (out, in) of ``y = W x``."""

    name: str
    shape: tuple[int, int]
    method: str
    pattern: str
    sparsity: float
    loss: float
    damp: float
    seconds: float
    zeros: int
    backend: str

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class PruneReport:
    """Returned by :func:`thanos_rs.prune_model`; ``to_dict()`` is the JSON report."""

    config: dict
    layers: list[LayerRecord]
    protocol: dict
    model_parameters: int
    perplexity_before: dict[str, float] = field(default_factory=dict)
    perplexity_after: dict[str, float] = field(default_factory=dict)
    lm_eval_before: dict[str, dict] = field(default_factory=dict)
    lm_eval_after: dict[str, dict] = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0
    # Linears inside blocks that the forward never called through their module (nothing to calibrate on).
    skipped_layers: list[str] = field(default_factory=list)
    checkpoint: dict = field(default_factory=dict)  # compact save: sizes dense vs compact
    shrunk: dict = field(default_factory=dict)  # --shrink: MLP -> new intermediate size

    @property
    def sparsity(self) -> float:
        """Effective sparsity over all pruned linears: zeros / weights, outlier rows included."""
        numel = sum(r.numel for r in self.layers)
        return sum(r.zeros for r in self.layers) / numel if numel else 0.0

    def totals(self) -> dict:
        numel = sum(r.numel for r in self.layers)
        zeros = sum(r.zeros for r in self.layers)
        return {
            "layers": len(self.layers),
            "pruned_weights": numel,
            "zeros": zeros,
            "effective_sparsity": self.sparsity,
            # Embeddings, norms and lm_head stay dense, so the whole model is less sparse.
            "model_sparsity": zeros / self.model_parameters if self.model_parameters else 0.0,
            "mean_loss": sum(r.loss for r in self.layers) / len(self.layers) if self.layers else 0.0,
            "solve_seconds": sum(r.seconds for r in self.layers),
            "seconds": self.seconds,
        }

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "protocol": self.protocol,
            "totals": self.totals(),
            "perplexity": {"before": self.perplexity_before, "after": self.perplexity_after},
            "lm_eval": {"before": self.lm_eval_before, "after": self.lm_eval_after},
            "peak_memory": self.peak_memory,
            "versions": self.versions,
            "layers": [asdict(r) for r in self.layers],
            "skipped_layers": self.skipped_layers,
            "checkpoint": self.checkpoint,
            "shrunk": self.shrunk,
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        text = json.dumps(self.to_dict(), indent=2)
        return write_atomic(Path(path), lambda f: f.write(text.encode()))

    def plot(self, path: str | os.PathLike) -> Path:
        """A PNG of per-layer loss (log scale) and achieved sparsity, in pruning order."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # The object API with the Agg canvas: no pyplot global state, no display needed.
        fig = Figure(figsize=(max(6.0, 0.12 * len(self.layers)), 6.0), layout="constrained")
        FigureCanvasAgg(fig)
        loss_ax, sparsity_ax = fig.subplots(2, 1, sharex=True)
        x = range(len(self.layers))
        loss_ax.plot(x, [max(r.loss, 1e-12) for r in self.layers], marker=".")
        loss_ax.set_yscale("log")
        loss_ax.set_ylabel("relative layer loss")
        loss_ax.set_title(f"{self.config.get('method')} {self.config.get('pattern')}: per-layer loss and sparsity")
        sparsity_ax.bar(x, [r.sparsity for r in self.layers])
        sparsity_ax.set_ylim(0, 1)
        sparsity_ax.set_ylabel("achieved sparsity")
        sparsity_ax.set_xlabel("layer (pruning order)")
        return write_atomic(Path(path), lambda f: fig.savefig(f, format="png"))

    def table(self) -> str:
        """The final human-readable summary: one row per layer, then totals and perplexities."""
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'shape':>12}  {'sparsity':>8}  {'loss':>10}  {'damp':>7}  {'seconds':>7}"]
        for r in self.layers:
            shape = f"{r.shape[0]}x{r.shape[1]}"
            numbers = f"{r.sparsity:>8.4f}  {r.loss:>10.3e}  {r.damp:>7.3g}  {r.seconds:>7.3f}"
            lines.append(f"{r.name:<{width}}  {shape:>12}  {numbers}")
        t = self.totals()
        lines.append(
            f"{len(self.layers)} layers pruned with {self.config.get('method')} {self.config.get('pattern')}: "
            f"effective sparsity {t['effective_sparsity']:.4f} of pruned linears "
            f"({t['model_sparsity']:.4f} of all parameters), {t['seconds']:.1f} s"
        )
        if self.skipped_layers:
            lines.append(f"not pruned (never called by the forward): {', '.join(self.skipped_layers)}")
        for source in sorted(set(self.perplexity_before) | set(self.perplexity_after)):
            before = self.perplexity_before.get(source, float("nan"))
            after = self.perplexity_after.get(source, float("nan"))
            lines.append(f"perplexity on {source}: dense {before:.3f} -> pruned {after:.3f}")
        for task in sorted(set(self.lm_eval_before) | set(self.lm_eval_after)):
            before, after = self.lm_eval_before.get(task), self.lm_eval_after.get(task)
            lines.append(f"lm-eval {task}: dense {before} -> pruned {after}")
        return "\n".join(lines)


def peak_memory(device: torch.device) -> dict:
    """Peak host RSS of this process and, on CUDA, peak allocated device memory (bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kibibytes on Linux, bytes on macOS.
    peak = {"host_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if device.type == "cuda":
        peak["device_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return peak


def versions() -> dict:
    import transformers

    from . import __version__

    return {
        "thanos_rs": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def write_atomic(path: Path, write) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it into place."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make the report private to this user
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash never leaves an empty file in place
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written beside ``path``, flushed to disk, then renamed into place."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.partial")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
