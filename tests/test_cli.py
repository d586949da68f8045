"""``python -m thanos_rs.prune``: flags, output files, the demo, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, fixture_path, stories_subset

from thanos_rs import default_assets
from thanos_rs.prune import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--model", "--method", "--pattern", "--sparsity", "--alpha", "--block-size", "--damp", "--nsamples",
         "--seqlen", "--calib", "--seed", "--device", "--offload", "--dtype", "--true-sequential", "--save",
         "--overwrite", "--eval", "--report"]


def _run(*args: str) -> list[str]:
    return ["--model", str(fixture_path("stories260k")), "--nsamples", "8", "--seqlen", "64", "--quiet", *args]


def test_help_documents_every_flag_with_its_default():
    actions = {s: a for a in build_parser()._actions for s in a.option_strings}
    for flag in FLAGS:
        assert flag in actions, flag
        assert "default" in actions[flag].help, flag
    text = build_parser().format_help()
    assert "min(2048, model context)" in text and "(default: 128" in text


def test_prune_save_report_and_table(tmp_path, small_text, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = tmp_path / "pruned", tmp_path / "report.json"
    code = main(_run("--method", "sparsegpt", "--pattern", "2:4", "--calib", str(small_text),
                     "--eval", str(small_text), "--save", str(out), "--report", str(report)))
    stdout = capsys.readouterr().out
    assert code == 0
    assert "model.layers.4.mlp.down_proj" in stdout and "perplexity on" in stdout and "dense" in stdout
    written = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= written
    model = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    down = model.model.layers[4].mlp.down_proj.weight
    assert bool(((down == 0).view(64, 43, 4).sum(-1) == 2).all())
    doc = json.loads(report.read_text())
    assert doc["totals"]["effective_sparsity"] == 0.5
    assert doc["perplexity"]["after"][str(small_text)] > doc["perplexity"]["before"][str(small_text)]
    assert doc["protocol"]["calibration"]["seqlen"] == 64
    assert report.with_suffix(".png").is_file()


def test_existing_save_directory_needs_overwrite(tmp_path, small_text, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.bin").write_bytes(b"x")
    assert main(_run("--calib", str(small_text), "--save", str(out))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["precious.bin"]
    assert main(_run("--calib", str(small_text), "--save", str(out), "--overwrite")) == 0
    assert (out / "config.json").is_file() and not (out / "precious.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _bad_dirs(tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(fixture_path("stories260k"), corrupt)
    (corrupt / "config.json").write_text("{ not json")
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "num_layers": 1}))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.\n")
    return corrupt, t5, empty, short


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("corrupt", "cannot load a causal LM"),
    ("t5", "cannot load a causal LM"),
    ("seqlen", "exceeds the model's context of 512"),
    ("empty", "holds no text"),
    ("short", "too few for one calibration window"),
    ("eval-short", "less than one window of seqlen=64"),
    ("nsamples", "nsamples must be a positive integer"),
    ("sparsity", "did you mean 0.5"),
    ("cuda", "torch sees no CUDA device"),
])
def test_bad_input_is_one_error_line(case, message, tmp_path, small_text, capsys):
    corrupt, t5, empty, short = _bad_dirs(tmp_path)
    stories = str(fixture_path("stories260k"))
    args = {
        "missing": ["--model", str(tmp_path / "nope")],
        "corrupt": ["--model", str(corrupt)],
        "t5": ["--model", str(t5)],
        "seqlen": ["--model", stories, "--seqlen", "4096", "--calib", str(small_text)],
        "empty": ["--model", stories, "--calib", str(empty), "--seqlen", "64"],
        "short": ["--model", stories, "--calib", str(short), "--seqlen", "64"],
        "eval-short": ["--model", stories, "--calib", str(small_text), "--seqlen", "64", "--nsamples", "4",
                       "--eval", str(short)],
        "nsamples": ["--model", stories, "--nsamples", "0"],
        "sparsity": ["--model", stories, "--sparsity", "50"],
        "cuda": ["--model", stories, "--device", "cuda"],
    }[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    save = tmp_path / "save"
    assert main([*args, "--quiet", "--save", str(save), "--report", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not save.exists() and not (tmp_path / "r.json").exists()


def test_error_exit_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    proc = subprocess.run([sys.executable, "-m", "thanos_rs.prune", "--model", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: model directory '{tmp_path / 'missing'}' does not exist"]
    assert proc.stdout == ""


# ---------------------------------------------------------------- the bundled model


@pytest.fixture
def bundled(monkeypatch, tmp_path):
    """Stand the stories260k fixture in for the bundled model, so these tests do not depend on it."""
    calib = stories_subset(tmp_path / "calib.txt", 30)
    heldout = stories_subset(tmp_path / "heldout.txt", 12)
    monkeypatch.setattr(default_assets, "default_model_dir", lambda: fixture_path("stories260k"))
    monkeypatch.setattr(default_assets, "default_calibration_file", lambda: calib)
    monkeypatch.setattr(default_assets, "default_eval_file", lambda: heldout)
    return heldout


def test_demo_prints_the_method_by_pattern_table(bundled, capsys):
    assert main(["--nsamples", "8", "--seqlen", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            ("dense", "magnitude", "wanda", "sparsegpt", "thanos")]
    assert [(r[0], r[1]) for r in rows] == [("dense", "-")] + [
        (m, p) for p in ("unstructured", "2:4", "structured") for m in ("magnitude", "wanda", "sparsegpt", "thanos")]
    assert "8 x 64 tokens" in out
    ppl = {(r[0], r[1]): float(r[3]) for r in rows}
    assert ppl[("thanos", "unstructured")] <= ppl[("magnitude", "unstructured")]
    assert float(rows[-1][2]) == pytest.approx(0.3, abs=0.02)  # structured 30%


def test_bundled_model_single_run_uses_the_bundled_text(bundled, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["--method", "wanda", "--quiet", "--report", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["protocol"]["calibration"]["nsamples"] == 32 and doc["protocol"]["calibration"]["seqlen"] == 256
    assert list(doc["perplexity"]["after"]) == [str(bundled)]
    assert torch.isfinite(torch.tensor(list(doc["perplexity"]["after"].values()))).all()


def test_demo_runs_on_the_bundled_model_and_text(capsys):
    assert main(["--nsamples", "4", "--seqlen", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(default_assets.default_model_dir()) in out and "4 x 64 tokens" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["thanos"]]
    assert len(rows) == 3 and all(float(r[3]) > 1 for r in rows)
