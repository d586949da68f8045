"""End to end: prune_model on tiny random models of every architecture and on stories260k."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import TINY_ARCHS, fixture_path, tiny_model

from thanos_rs import pipeline
from thanos_rs.errors import DataError, HessianError, InputError, ModelError
from thanos_rs.model import find_decoder, load_model, weight_matrix
from thanos_rs.pipeline import PruneConfig, prune_model
from thanos_rs.spec import ceil_count, target_zeros

pytestmark = pytest.mark.usefixtures("one_thread")

PATTERNS = [("unstructured", 0.5), ("2:4", 0.5), ("structured", 0.3)]


def _calibration(nsamples=6, seqlen=24, seed=0):
    return torch.randint(3, 512, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def _prune(model, calibration=None, **overrides):
    config = PruneConfig(**{"progress": False, "batch_size": 4, **overrides})
    return prune_model(model, None, config, calibration=_calibration() if calibration is None else calibration)


def _assert_exact_sparsity(model, report, pattern, sparsity):
    decoder = find_decoder(model)
    records = {r.name: r for r in report.layers}
    names = [n for i in range(len(decoder.blocks)) for n in decoder.linears(i)]
    assert sorted(records) == sorted(names) and len(report.layers) == len(names)  # all linears, nothing else
    for i in range(len(decoder.blocks)):
        for name, module in decoder.linears(i).items():
            zeros = weight_matrix(module) == 0
            c, b = zeros.shape
            assert records[name].zeros == int(zeros.sum()), name
            if pattern == "unstructured":
                assert int(zeros.sum()) == target_zeros(sparsity, c, b), name
            elif pattern == "2:4":
                assert bool((zeros.view(c, b // 4, 4).sum(-1) == 2).all()), name
            else:  # whole input columns, and nothing else
                dead = zeros.all(dim=0)
                assert int(dead.sum()) == ceil_count(sparsity * b), name
                assert int(zeros.sum()) == int(dead.sum()) * c, name


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_architecture_prunes_exactly_and_reloads(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    for pattern, sparsity in PATTERNS:
        model = tiny_model(arch)
        out = tmp_path / pattern.replace(":", "-")
        report = _prune(model, pattern=pattern, sparsity=sparsity, save=str(out))
        _assert_exact_sparsity(model, report, pattern, sparsity)
        assert all(0 <= r.loss < 1 for r in report.layers)
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        ids = _calibration(2, 20, seed=9)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_method_is_exact_in_the_pipeline(method):
    for pattern, sparsity in PATTERNS:
        model = tiny_model("llama")
        report = _prune(model, method=method, pattern=pattern, sparsity=sparsity)
        _assert_exact_sparsity(model, report, pattern, sparsity)
        assert {r.method for r in report.layers} == {method}


def test_block_zero_matches_prune_layer_on_its_own_inputs():
    # q, k and v read one tensor and share one Hessian: each must equal a direct prune_layer call.
    from thanos_rs.kernels import prune_layer

    model = tiny_model("llama")
    block = model.model.layers[0]
    dense = {n: getattr(block.self_attn, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj")}
    ids = _calibration()
    with torch.no_grad():
        x = block.input_layernorm(model.model.embed_tokens(ids)).reshape(-1, 32).double()
    hessian = (2.0 / x.shape[0] * x.T @ x).float()
    _prune(model, calibration=ids, batch_size=6, hessian_dtype="float64")
    for name, w in dense.items():
        expected = prune_layer(w, hessian).weight
        torch.testing.assert_close(getattr(block.self_attn, name).weight, expected, rtol=1e-5, atol=1e-6)


def test_outlier_rows_lower_the_effective_sparsity():
    model = tiny_model("llama")
    report = _prune(model, pattern="2:4", alpha=0.25)
    assert report.sparsity < 0.5
    # Reported per layer and in total as what the weights really hold.
    assert report.totals()["zeros"] == sum(int((weight_matrix(m) == 0).sum())
                                           for i in range(2) for m in find_decoder(model).linears(i).values())


def test_true_sequential_sees_pruned_inputs():
    plain, sequential = tiny_model("llama"), tiny_model("llama")
    _prune(plain)
    report = _prune(sequential, true_sequential=True)
    _assert_exact_sparsity(sequential, report, "unstructured", 0.5)
    q_plain = find_decoder(plain).blocks[0].self_attn
    q_seq = find_decoder(sequential).blocks[0].self_attn
    # The first group (q,k,v) sees the dense block either way; later groups differ.
    torch.testing.assert_close(q_plain.q_proj.weight, q_seq.q_proj.weight)
    assert not torch.equal(q_plain.o_proj.weight, q_seq.o_proj.weight)


def test_offload_cpu_gives_the_in_memory_result():
    memory, offloaded = tiny_model("qwen2"), tiny_model("qwen2")
    a = _prune(memory, pattern="2:4")
    b = _prune(offloaded, pattern="2:4", offload="cpu")
    for (name, p), (_, q) in zip(memory.named_parameters(), offloaded.named_parameters()):
        assert torch.equal(p, q), name
    assert [r.loss for r in a.layers] == [r.loss for r in b.layers]
    assert b.protocol["offload"] == "cpu"


def test_offload_cpu_evaluates_like_in_memory(small_text):
    path = str(fixture_path("stories260k"))
    reports = []
    for offload in ("none", "cpu"):
        model, tokenizer = load_model(path)
        config = PruneConfig(method="wanda", calib=str(small_text), nsamples=4, seqlen=64, offload=offload,
                             eval=[str(small_text)], progress=False)
        reports.append(prune_model(model, tokenizer, config))
    assert reports[0].perplexity_before == reports[1].perplexity_before
    assert reports[0].perplexity_after == reports[1].perplexity_after


def test_float64_hessians_and_mini_batches_agree():
    one, other = tiny_model("llama"), tiny_model("llama")
    _prune(one, batch_size=1, hessian_dtype="float64")
    _prune(other, batch_size=6)
    for p, q in zip(one.parameters(), other.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_report_files(tmp_path):
    model = tiny_model("gpt2")
    path = tmp_path / "reports" / "run.json"
    report = _prune(model, pattern="structured", sparsity=0.3, report=str(path))
    doc = json.loads(path.read_text())
    assert doc["config"]["pattern"] == "structured"
    assert doc["totals"]["layers"] == 8 and doc["totals"]["effective_sparsity"] == report.sparsity
    assert set(doc["layers"][0]) >= {"name", "shape", "method", "pattern", "sparsity", "loss", "damp", "seconds"}
    assert doc["layers"][0]["shape"] == [96, 32]  # GPT-2 Conv1D reported as (out, in)
    assert set(doc["versions"]) == {"thanos_rs", "torch", "transformers", "python"}
    assert doc["peak_memory"]["host_rss_bytes"] > 0 and doc["skipped_layers"] == []
    assert doc["protocol"]["calibration"]["nsamples"] == 6 and doc["protocol"]["dtype"] == "float32"
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json", "run.png"]


# ---------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def stories_run(one_thread, small_text):
    """Dense and pruned perplexities of stories260k on 40 real stories, per method."""
    path = str(fixture_path("stories260k"))
    results = {}
    for method in ("magnitude", "thanos"):
        model, tokenizer = load_model(path)
        config = PruneConfig(method=method, calib=str(small_text), nsamples=16, seqlen=128,
                             eval=[str(small_text)], progress=False)
        results[method] = prune_model(model, tokenizer, config)
    return results


def test_stories_thanos_beats_magnitude_and_stays_sane(stories_run, small_text):
    source = str(small_text)
    dense = stories_run["thanos"].perplexity_before[source]
    assert dense == pytest.approx(stories_run["magnitude"].perplexity_before[source])
    assert 3.0 < dense < 6.0  # the fixture README measures 4.23 on all 500 stories
    thanos = stories_run["thanos"].perplexity_after[source]
    magnitude = stories_run["magnitude"].perplexity_after[source]
    assert thanos <= magnitude
    assert thanos < 6 * dense
    assert stories_run["thanos"].sparsity == 0.5
    assert stories_run["thanos"].protocol["calibration"]["sampling"] == "documents"


@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
def test_stories_exact_sparsity_per_pattern_and_reload_gives_the_same_logits(pattern, sparsity, tmp_path):
    from transformers import AutoModelForCausalLM

    path = str(fixture_path("stories260k"))
    model, _ = load_model(path)
    ids = torch.randint(3, 512, (4, 64), generator=torch.Generator().manual_seed(1))
    report = _prune(model, calibration=ids, pattern=pattern, sparsity=sparsity, save=str(tmp_path / "out"))
    _assert_exact_sparsity(model, report, pattern, sparsity)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
def test_half_precision_models_prune_exactly(dtype, pattern, sparsity):
    # What --dtype auto gives on a GPU: the checkpoint's fp16/bf16 weights (solved in float32, stored back).
    model = tiny_model("llama").to(dtype)
    report = _prune(model, pattern=pattern, sparsity=sparsity)
    _assert_exact_sparsity(model, report, pattern, sparsity)
    for name, param in model.named_parameters():
        assert param.dtype == dtype and bool(torch.isfinite(param).all()), name


# ---------------------------------------------------------------- bad input, no output


def test_a_failure_mid_run_leaves_no_output_and_the_same_call_resumes(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:  # in block 1: block 0 is finished and kept
            raise HessianError("not positive definite even after damping retries")
        return real(*args, **kwargs)

    real = pipeline.prune_layer
    monkeypatch.setattr(pipeline, "prune_layer", failing)
    with pytest.raises(HessianError):
        _prune(tiny_model("llama"), save=str(tmp_path / "out"), report=str(tmp_path / "r.json"))
    # Nothing under the final names; only the hidden work directory the resume needs.
    assert [p.name for p in tmp_path.iterdir()] == [".out.thanos-run"]
    assert json.loads((tmp_path / ".out.thanos-run/state/progress.json").read_text())["done"] == 1

    monkeypatch.setattr(pipeline, "prune_layer", real)
    calls.clear()
    resumed = _prune(tiny_model("llama"), save=str(tmp_path / "out"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    whole = _prune(tiny_model("llama"), save=str(tmp_path / "whole"))
    assert [(r.name, r.zeros, r.loss) for r in resumed.layers] == [(r.name, r.zeros, r.loss) for r in whole.layers]
    assert (tmp_path / "out/model.safetensors").read_bytes() == (tmp_path / "whole/model.safetensors").read_bytes()


def test_an_unfinished_run_of_another_command_is_not_resumed(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise HessianError("not positive definite even after damping retries")

    monkeypatch.setattr(pipeline, "prune_layer", failing)
    with pytest.raises(HessianError):
        _prune(tiny_model("llama"), save=str(tmp_path / "out"))
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"another command \(differs in: settings.sparsity\).*--overwrite"):
        _prune(tiny_model("llama"), save=str(tmp_path / "out"), sparsity=0.6)
    report = _prune(tiny_model("llama"), save=str(tmp_path / "out"), sparsity=0.6, overwrite=True)
    assert report.sparsity == pytest.approx(0.6, abs=0.01)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_save_directory_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model = tiny_model("llama")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(InputError, match="not empty; pass --overwrite"):
        _prune(model, save=str(out))
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    _prune(model, save=str(out), overwrite=True)
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()


def test_seqlen_above_the_context_is_refused():
    with pytest.raises(InputError, match="exceeds the model's context of 256 tokens"):
        _prune(tiny_model("llama"), calibration=_calibration(2, 300))


def test_bad_configs(small_text):
    model = tiny_model("llama")
    with pytest.raises(DataError, match="nsamples"):
        prune_model(model, None, PruneConfig(nsamples=0))
    with pytest.raises(InputError, match="tokenizer"):
        prune_model(model, None, PruneConfig(calib=str(small_text)))
    with pytest.raises(InputError, match="offload"):
        _prune(model, offload="gpu")
    with pytest.raises(InputError, match="alpha"):
        _prune(model, method="wanda", pattern="2:4", alpha=0.1)
    with pytest.raises(DataError, match="token ids"):
        _prune(model, calibration=torch.rand(2, 8))


def test_nm_pattern_that_does_not_tile_a_layer_is_refused_up_front(tmp_path):
    model, _ = load_model(str(fixture_path("stories260k")))  # down_proj reads 172 = 4 * 43 inputs
    with pytest.raises(InputError, match="multiple of 8, but the layer has 172"):
        _prune(model, pattern="4:8", save=str(tmp_path / "out"))
    assert not (weight_matrix(model.model.layers[0].self_attn.q_proj) == 0).any()
    assert list(tmp_path.iterdir()) == []


def test_unsupported_model_is_a_model_error():
    with pytest.raises(ModelError, match="no nn.ModuleList of decoder blocks"):
        _prune(torch.nn.Sequential(torch.nn.Embedding(512, 8), torch.nn.Linear(8, 512)))


@pytest.mark.parametrize("stop_at", ["rename of the work directory", "removal of the finished work directory"])
def test_a_run_killed_after_its_final_rename_is_complete_and_its_leftovers_go(tmp_path, monkeypatch, stop_at):
    from thanos_rs import resume

    real_replace, real_rmtree = resume.os.replace, resume.shutil.rmtree

    def replace(src, dst):
        if str(dst).endswith(".thanos-run.done") and stop_at.startswith("rename"):
            raise KeyboardInterrupt  # the kill, between moving model/ into place and retiring the work directory
        return real_replace(src, dst)

    def rmtree(path, *args, **kwargs):
        if str(path).endswith(".thanos-run.done") and stop_at.startswith("removal") and os.path.isdir(path):
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(resume.os, "replace", replace)
    monkeypatch.setattr(resume.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        _prune(tiny_model("llama"), save=str(tmp_path / "out"))
    monkeypatch.undo()
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the output is complete
    with pytest.raises(InputError, match="exists and is not empty"):
        _prune(tiny_model("llama"), save=str(tmp_path / "out"))
    _prune(tiny_model("llama"), save=str(tmp_path / "out"), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_another_dtype_is_another_command(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "prune_layer", lambda *a, **k: (_ for _ in ()).throw(HessianError("no")))
    with pytest.raises(HessianError):
        _prune(tiny_model("llama"), save=str(tmp_path / "out"))
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"differs in: dtype"):
        _prune(tiny_model("llama").double(), save=str(tmp_path / "out"))
