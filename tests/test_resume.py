"""A killed run resumes with the same command, bit for bit; the same seed gives the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import random_llama_dir

BLOCKS = 8


def _command(model_dir, calib, save, offload):
    return [sys.executable, "-m", "thanos_rs.prune", "--model", str(model_dir), "--calib", str(calib),
            "--nsamples", "8", "--seqlen", "128", "--batch-size", "4", "--offload", offload, "--save", str(save),
            "--quiet"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _kill_when_done(command, progress: Path, blocks: int) -> int:
    """Start the command; SIGKILL it as soon as ``blocks`` blocks are recorded. Returns how many were."""
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if progress.is_file():
            try:
                done = json.loads(progress.read_text())["done"]
            except (json.JSONDecodeError, KeyError):  # never expected: it is renamed into place whole
                raise AssertionError("progress.json was seen half-written") from None
            if done >= blocks:
                break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return done


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_llama_dir(tmp_path_factory.mktemp("model") / "llama", layers=BLOCKS, hidden=256, intermediate=768)


@pytest.mark.parametrize("offload", ["none", "disk"])
def test_a_killed_run_resumes_to_a_bit_identical_output(model_dir, small_text, tmp_path, offload):
    whole = tmp_path / "whole"
    subprocess.run(_command(model_dir, small_text, whole, offload), env=_env(), check=True, capture_output=True)

    out = tmp_path / "out"
    command = _command(model_dir, small_text, out, offload)
    progress = tmp_path / ".out.thanos-run" / "state" / "progress.json"
    killed_at = [_kill_when_done(command, progress, 2)]
    assert not out.exists()  # nothing under the final name while unfinished
    killed_at.append(_kill_when_done(command, progress, killed_at[0] + 3))
    assert not out.exists()
    assert 2 <= killed_at[0] < killed_at[1] < BLOCKS, killed_at

    last = subprocess.run(command, env=_env(), capture_output=True, text=True)
    assert last.returncode == 0, last.stderr[-2000:]
    assert f"{killed_at[1]} of {BLOCKS} blocks already pruned" in last.stderr
    assert _files(out) == _files(whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "whole"]


def test_the_same_seed_gives_the_same_bytes(stories_model_dir, small_text, tmp_path):
    def run(save):
        command = _command(stories_model_dir, small_text, save, "none") + ["--seed", "3", "--pattern", "2:4",
                                                                            "--alpha", "0.1"]
        subprocess.run(command, env=_env(), check=True, capture_output=True)
        return _files(save)

    assert run(tmp_path / "a") == run(tmp_path / "b")
