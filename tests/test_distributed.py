"""``torchrun --nproc-per-node 2 -m thanos_rs.prune``: gloo on the CPU, same result as one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM


def _run(args, save, processes):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "thanos_rs.prune", *args, "--save", str(save)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _args(model, calib, *extra):
    return ["--model", str(model), "--calib", str(calib), "--nsamples", "8", "--batch-size", "2", "--seqlen", "64",
            "--hessian-dtype", "float64", "--quiet", *extra]


@pytest.mark.parametrize("extra", [
    ("--method", "thanos", "--pattern", "unstructured"),
    ("--method", "sparsegpt", "--pattern", "2:4", "--offload", "disk"),
    ("--method", "thanos", "--pattern", "structured", "--sparsity", "0.3", "--alpha", "0.1", "--true-sequential"),
])
def test_two_processes_prune_like_one(stories_model_dir, small_text, tmp_path, extra):
    args = _args(stories_model_dir, small_text, *extra)
    one, two = _run(args, tmp_path / "one", 1), _run(args, tmp_path / "two", 2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key] == 0, b[key] == 0), key  # masks equal
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # Rank 0 alone prints the table and writes; the other rank is silent.
    assert two.stdout.count("layers pruned with") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


SOLVE_SCRIPT = """
import torch, torch.distributed as dist
from thanos_rs.distributed import init_from_env
from thanos_rs.errors import HessianError

world = init_from_env("cpu")
def solve():
    raise HessianError("not positive definite")
try:
    world.solve_on(1, solve, torch.zeros(3))
except HessianError as e:
    print(f"rank {world.rank} raised {type(e).__name__}: {e}", flush=True)
dist.destroy_process_group()
"""


def test_a_solve_that_fails_on_one_rank_fails_every_rank(tmp_path):
    script = tmp_path / "solve.py"
    script.write_text(SOLVE_SCRIPT)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for rank in (0, 1):  # neither is left waiting for the other's broadcast
        assert f"rank {rank} raised HessianError: not positive definite" in run.stdout


def test_more_processes_than_calibration_batches_is_a_clear_error(stories_model_dir, small_text, tmp_path):
    args = _args(stories_model_dir, small_text, "--nsamples", "2", "--batch-size", "2")
    run = _run(args, tmp_path / "out", 2)
    assert run.returncode != 0
    assert "error: 2 processes need at least 2 calibration batches, got 1" in run.stderr
    assert not (tmp_path / "out").exists()
