"""Compact checkpoints: bit-identical reload, sizes, atomic writes, loaders, errors.

``pruned_model`` (also used by test_sparse24 and test_shrink) prunes every
decoder linear of a tiny random model with Thanos (torch backend) on a random
SPD Hessian; each (arch, pattern, alpha) is pruned once per session.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from conftest import tiny_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from thanos_rs import export, prune_layer
from thanos_rs.errors import InputError, ModelError
from thanos_rs.model import decoder_linears, weight_matrix

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.int64: torch.int64}


@functools.lru_cache(maxsize=None)
def _pruned_state(arch: str, pattern: str, sparsity: float, alpha: float) -> dict[str, torch.Tensor]:
    model = tiny_model(arch)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in decoder_linears(model).values():
            w = weight_matrix(module)
            x = torch.randn(w.shape[1], 2 * w.shape[1], generator=gen)
            res = prune_layer(w, 2 * x @ x.T / x.shape[1], pattern=pattern, sparsity=sparsity, alpha=alpha,
                              backend="torch")
            w.copy_(res.weight)
    return model.state_dict()


def pruned_model(pattern: str | None, sparsity: float = 0.5, alpha: float = 0.0, dtype=torch.float32,
                 arch: str = "llama"):
    """A fresh tiny ``arch`` model, pruned as asked (``pattern=None``: dense), in ``dtype``."""
    model = tiny_model(arch)
    if pattern is not None:
        model.load_state_dict(_pruned_state(arch, pattern, sparsity, alpha))
    return model.to(dtype)


def assert_same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key].view(_INT[a[key].dtype]), b[key].view(_INT[b[key].dtype])), key


@pytest.fixture
def unpatched():
    """Restore transformers' from_pretrained after a test that calls export.register()."""
    original = PreTrainedModel.__dict__["from_pretrained"]
    yield
    PreTrainedModel.from_pretrained = original


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (4, 8), (8, 16)])
@pytest.mark.parametrize("dtype", DTYPES.values())
def test_encode_decode_is_bit_identical(n, m, dtype):
    gen = torch.Generator().manual_seed(n * 100 + m)
    w = torch.randn(24, 64, generator=gen).to(dtype)
    order = torch.rand(24, 64 // m, m, generator=gen).argsort(-1)[..., :n]  # n random zeros per group
    w = w.view(24, 64 // m, m).scatter(-1, order, 0.0).view(24, 64)
    w[3, (w[3] != 0).nonzero()[0]] = -0.0  # a kept value that compares equal to zero
    w[7] = torch.randn(64, generator=gen).to(dtype)  # an outlier row
    meta, parts = export.encode(w)
    if (m - n) * export.code_bits(m) > m:  # positions cost more than a bitmask here
        assert meta["format"] == "bitmask"
    else:
        assert (meta["format"], meta["n"], meta["m"], meta["outliers"]) == ("nm", n, m, 1)
    w[9, :m] = 0.0  # a group with more than n zeros: whichever encoding wins, it must be exact
    forced = {"format": "nm", "n": n, "m": m, "shape": [24, 64]}
    forced_parts = export._encode_nm(w, forced)  # also sets forced["outliers"]
    for meta, parts in (export.encode(w), (forced, forced_parts)):
        assert torch.equal(export.decode(meta, parts).view(_INT[dtype]), w.view(_INT[dtype]))


def test_encode_keeps_dense_and_empty_weights_exact():
    dense = torch.randn(8, 16)
    assert export.encode(dense) == ({"format": "dense", "shape": [8, 16], "dtype": "float32"}, {})
    empty = torch.zeros(8, 16, dtype=torch.float16)
    meta, parts = export.encode(empty)
    assert meta["format"] != "dense"
    assert torch.equal(export.decode(meta, parts), empty)


# ---------------------------------------------------------------- save and load


@pytest.mark.parametrize("pattern,dtype,expected", [
    ("2:4", "float16", "nm 2:4"), ("2:4", "bfloat16", "nm 2:4"), ("2:4", "float32", "nm 2:4"),
    ("unstructured", "float16", "bitmask"), (None, "float32", "dense"),
])
def test_reload_is_bit_identical(tmp_path, pattern, dtype, expected):
    alpha = 0.1 if pattern == "2:4" else 0.0
    model = pruned_model(pattern, alpha=alpha, dtype=DTYPES[dtype])
    out = export.save_compact(model, None, tmp_path / "compact")
    assert set(export.compact_report(out).formats.values()) == {expected}
    loaded = export.load_pretrained(out)
    assert loaded.dtype == DTYPES[dtype]
    assert_same_bits(model.state_dict(), loaded.state_dict())
    assert not hasattr(loaded.config, export.FORMAT_KEY)  # a re-save of the loaded model is a plain dense one


def test_conv1d_weights_round_trip(tmp_path):
    model = pruned_model("2:4", dtype=torch.float16, arch="gpt2")  # GPT-2 stores W^T
    out = export.save_compact(model, None, tmp_path / "gpt2")
    assert set(export.compact_report(out).formats.values()) == {"nm 2:4"}
    assert_same_bits(model.state_dict(), export.load_pretrained(out).state_dict())


def test_sharded_checkpoint_round_trip(tmp_path):
    model = pruned_model("2:4", alpha=0.1, dtype=torch.float16)
    out = export.save_compact(model, None, tmp_path / "sharded", max_shard_size="40KB")
    names = sorted(p.name for p in out.iterdir())
    assert export.INDEX_NAME in names and not any(n.startswith("model") for n in names)
    assert sum(n.startswith("thanos_compact-") for n in names) > 1
    assert set(export.compact_report(out).formats.values()) == {"nm 2:4"}
    assert_same_bits(model.state_dict(), export.load_pretrained(out).state_dict())


def test_24_fp16_size_and_tokenizer(tmp_path, stories_tokenizer):
    model = pruned_model("2:4", dtype=torch.float16)
    out = export.save_compact(model, stories_tokenizer, tmp_path / "c")
    report = export.compact_report(out)
    # 0.5 for the kept values + 2 bits per kept value (0.0625) and nothing else: no outlier rows.
    assert report.linear_ratio == pytest.approx(0.5625)
    assert report.linear_ratio <= 0.6 and report.dir_bytes < report.dense_dir_bytes
    assert "linear weights" in report.table()
    dense_dir = tmp_path / "dense"
    model.save_pretrained(dense_dir)
    dense_bytes = sum(f.stat().st_size for f in dense_dir.iterdir())
    stories_tokenizer.save_pretrained(dense_dir)
    tokenizer_bytes = sum(f.stat().st_size for f in dense_dir.iterdir()) - dense_bytes
    # The estimate of the dense directory is off only by the compact format's own metadata (config
    # entry, longer safetensors header): a few KB, whatever the model size.
    assert 0 <= report.dense_dir_bytes - (dense_bytes + tokenizer_bytes) < 8192
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).encode("Once upon a time") == stories_tokenizer.encode("Once upon a time")


def test_register_makes_auto_from_pretrained_work(tmp_path, unpatched):
    model = pruned_model("2:4", alpha=0.1, dtype=torch.bfloat16)
    out = export.save_compact(model, None, tmp_path / "c")
    with pytest.raises(OSError):  # without the hook it fails loudly, never loads random weights
        AutoModelForCausalLM.from_pretrained(out)
    export.register()
    export.register()  # idempotent
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert_same_bits(model.state_dict(), loaded.state_dict())
    ids = torch.tensor([[1, 5, 9, 33]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    loaded.save_pretrained(tmp_path / "dense")  # decompressed: a plain checkpoint again
    assert export.FORMAT_KEY not in json.loads((tmp_path / "dense" / "config.json").read_text())
    assert_same_bits(model.state_dict(), AutoModelForCausalLM.from_pretrained(tmp_path / "dense").state_dict())


# ---------------------------------------------------------------- atomicity and errors


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    model = pruned_model("2:4")
    calls = []

    def failing(w):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(w)

    real = export.encode
    monkeypatch.setattr(export, "encode", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        export.save_compact(model, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    model = pruned_model("2:4")
    with pytest.raises(InputError, match="not empty"):
        export.save_compact(model, None, target)
    assert (target / "keep.txt").exists()
    export.save_compact(model, None, target, overwrite=True)
    assert not (target / "keep.txt").exists() and export.is_compact(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bad_directories_raise_model_error(tmp_path):
    model = pruned_model(None)
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(ModelError, match="not a thanos_rs compact directory"):
        export.decompress_state_dict(tmp_path / "dense")
    out = export.save_compact(model, None, tmp_path / "c")
    config = json.loads((out / "config.json").read_text())
    config[export.FORMAT_KEY]["version"] = 99
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="version 99"):
        export.load_pretrained(out)
    config[export.FORMAT_KEY]["version"] = export.VERSION
    (out / "config.json").write_text(json.dumps(config))
    (out / export.WEIGHTS_NAME).unlink()
    with pytest.raises(ModelError, match="neither"):
        export.compact_report(out)
