"""``--save --format compact`` and ``--shrink`` through the CLI on the real stories260K model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fixture_path

import thanos_rs
from thanos_rs.prune import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, small_text, *args: str) -> list[str]:
    return ["--model", str(fixture_path("stories260k")), "--nsamples", "8", "--seqlen", "64", "--quiet",
            "--calib", str(small_text), "--report", str(tmp_path / "report.json"), *args]


def _logits(model) -> torch.Tensor:
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        return model(ids).logits


def test_compact_save_reloads_bit_identical_and_is_smaller(tmp_path, small_text, capsys):
    from transformers import AutoModelForCausalLM

    dense_dir, compact_dir = tmp_path / "dense", tmp_path / "compact"
    common = ("--method", "thanos", "--pattern", "2:4")
    assert main(_run(tmp_path, small_text, *common, "--save", str(dense_dir))) == 0
    assert main(_run(tmp_path, small_text, *common, "--save", str(compact_dir), "--format", "compact")) == 0
    assert "linear weights" in capsys.readouterr().out  # the size table
    dense = AutoModelForCausalLM.from_pretrained(dense_dir)
    compact = thanos_rs.load_pretrained(compact_dir)
    for (name, a), (_, b) in zip(dense.state_dict().items(), compact.state_dict().items()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(_logits(compact), _logits(dense), rtol=0, atol=0)
    sizes = json.loads((tmp_path / "report.json").read_text())["checkpoint"]
    # fp32 2:4: kept values are half, positions 2 bits per kept value (1/32 of the dense bytes).
    assert sizes["linear_ratio"] <= 0.55
    assert sizes["encodings"] == {"nm 2:4": 35}


def test_shrink_saves_a_standard_smaller_model(tmp_path, small_text):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "shrunk"
    args = ("--method", "thanos", "--pattern", "structured", "--sparsity", "0.3", "--save", str(out), "--shrink")
    assert main(_run(tmp_path, small_text, *args)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    size = model.config.intermediate_size
    # down_proj has 172 inputs: 30% structured removes ceil(0.3 * 172) = 52 channels from every layer.
    assert size == 172 - 52
    assert set(report["shrunk"].values()) == {size}
    assert all(layer.mlp.down_proj.in_features == size for layer in model.model.layers)


def test_shrink_needs_structured_pruning(tmp_path, small_text, capsys):
    assert main(_run(tmp_path, small_text, "--pattern", "2:4", "--shrink")) == 2
    assert "structured" in capsys.readouterr().err
