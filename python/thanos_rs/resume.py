"""Resumable runs: a ``--save DIR`` run keeps its progress beside DIR, so a killed run goes on.

The work directory ``.<DIR name>.thanos-run/`` (a hidden sibling of DIR, so the
final rename is atomic) holds::

    run.json                          what the run is: a different command will not resume from it
    model/                            the output being built (--offload disk: one shard per finished block)
    state/progress.json               blocks done, their layer records, the evaluation before pruning
    state/block-00003.safetensors     block 3's pruned tensors (in-memory runs; disk runs have them in model/)
    state/hidden-00004-rank0.safetensors   block 4's inputs: this rank's calibration activations

Every file is written under a temporary name, flushed to disk and renamed, and
``progress.json`` last, so whenever the process dies the directory describes a
finished prefix of the blocks. Activations are numbered by block, so a kill
between writing new ones and the progress file leaves the old ones valid. When
the run finishes, ``model/`` is renamed to DIR and the work directory renamed to
``.<DIR name>.thanos-run.done`` before it is deleted: a work directory without
``model/`` (or a ``.done`` one) is a finished run's leftover, removed by the next
run. Nothing partial is ever visible under DIR.

In a distributed run rank 0 reads the directory and tells the other ranks what
it found, so every rank takes the same path through the collectives.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .distributed import World
from .errors import InputError
from .model import Decoder, swap_in
from .report import save_tensors_atomic, write_atomic

__all__ = ["RunDir", "discard_finished_run", "run_dir_of", "unfinished_run"]

FORMAT = 1


class RunDir:
    """The work directory of one ``--save`` run; every rank of a distributed run opens the same one."""

    def __init__(self, target: str | Path, fingerprint: dict, world: World):
        self.target = Path(target).absolute()
        self.root = run_dir_of(self.target)
        self.model_dir = self.root / "model"
        self.state_dir = self.root / "state"
        self.fingerprint = {"format": FORMAT, **fingerprint}
        self.world = world

    def open(self, overwrite: bool) -> dict | None:
        """Continue the run found here (its progress) or start afresh (None)."""
        decision = self._decide(overwrite) if self.world.main else None
        action, detail = self.world.broadcast(decision)
        if action == "refuse":
            raise InputError(detail)
        if action == "fresh" and self.world.main:
            shutil.rmtree(self.root, ignore_errors=True)
            self.model_dir.mkdir(parents=True)
            self.state_dir.mkdir()
            _write_json(self.root / "run.json", self.fingerprint)
        self.world.barrier()
        return detail if action == "resume" else None

    def _decide(self, overwrite: bool) -> tuple[str, object]:
        discard_finished_run(self.target)
        run_file = self.root / "run.json"
        saved = json.loads(run_file.read_text()) if run_file.is_file() else None
        if saved == self.fingerprint:
            return "resume", self._progress()
        if saved is not None and not overwrite:
            changed = sorted(_differences(saved, self.fingerprint))
            return "refuse", (
                f"{self.root} holds an unfinished run of another command (differs in: {', '.join(changed)}); "
                "repeat that command to resume it, or pass --overwrite to discard it and start this one"
            )
        return "fresh", None

    def commit(self, index: int, hidden: list[torch.Tensor], progress: dict,
               block_tensors: dict[str, torch.Tensor] | None) -> None:
        """Block ``index`` is done; ``hidden`` (its outputs) are block ``index + 1``'s inputs."""
        if block_tensors is not None and self.world.main:
            save_tensors_atomic(self.state_dir / f"block-{index:05d}.safetensors", block_tensors)
        save_tensors_atomic(self._hidden_file(index + 1, self.world.rank),
                            {f"batch-{i}": h for i, h in enumerate(hidden)})
        self.world.barrier()  # every rank's activations are on disk before progress says so
        if self.world.main:
            _write_json(self.state_dir / "progress.json", {**progress, "done": index + 1})
            for rank in range(self.world.size):
                self._hidden_file(index, rank).unlink(missing_ok=True)

    def hidden(self, done: int) -> list[torch.Tensor]:
        """This rank's activations saved when ``done`` blocks were finished."""
        tensors = load_file(self._hidden_file(done, self.world.rank))
        return [tensors[f"batch-{i}"] for i in range(len(tensors))]

    def restore_blocks(self, decoder: Decoder, done: int) -> None:
        """Put the pruned tensors of the first ``done`` blocks back (in-memory runs)."""
        for index in range(done):
            block: nn.Module = decoder.blocks[index]
            saved = load_file(self.state_dir / f"block-{index:05d}.safetensors")
            prefix = f"{decoder.prefix}.{index}."
            block.load_state_dict({k.removeprefix(prefix): v for k, v in saved.items()})

    def finish(self, write) -> Path:
        """``write(model_dir)`` completes the output; then it becomes the target, atomically."""
        if self.world.main:
            write(self.model_dir)
            swap_in(self.model_dir, self.target)
            done = _done_dir(self.target)
            os.replace(self.root, done)  # one step: never a work directory with half its state
            shutil.rmtree(done)
        self.world.barrier()
        return self.target

    def _progress(self) -> dict | None:
        path = self.state_dir / "progress.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _hidden_file(self, done: int, rank: int) -> Path:
        return self.state_dir / f"hidden-{done:05d}-rank{rank}.safetensors"


def run_dir_of(target: str | Path) -> Path:
    """The hidden sibling where a ``--save target`` run keeps its progress."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.thanos-run"


def unfinished_run(target: str | Path) -> Path | None:
    """The work directory of an unfinished run towards ``target``, if there is one."""
    root = run_dir_of(target)
    return root if (root / "model").is_dir() and (root / "run.json").is_file() else None


def discard_finished_run(target: str | Path) -> None:
    """Remove what a run killed after its final rename left behind: a work directory without model/."""
    root = run_dir_of(target)
    if root.is_dir() and not (root / "model").is_dir():
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(_done_dir(target), ignore_errors=True)


def _done_dir(target: Path) -> Path:
    root = run_dir_of(target)
    return root.with_name(root.name + ".done")


def _write_json(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=2)
    write_atomic(path, lambda f: f.write(text.encode()))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = set(a) | set(b)
    out = []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out
