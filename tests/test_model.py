"""Model structure, block-call capture and replay, loading errors, atomic saving."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import TINY_ARCHS, fixture_path, tiny_model
from torch import nn

from thanos_rs.errors import InputError, ModelError, ThanosError
from thanos_rs.model import (
    Conv1D,
    capture_block_calls,
    find_decoder,
    linear_groups,
    load_model,
    model_context,
    run_block,
    save_model,
    weight_matrix,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _real_block_outputs(model, decoder, ids):
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for b in decoder.blocks]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_replayed_blocks_match_the_real_forward(arch):
    # 40 tokens > the sliding window of 16: hybrid models get different masks per block.
    model = tiny_model(arch)
    decoder = find_decoder(model)
    ids = torch.randint(3, 512, (3, 40), generator=torch.Generator().manual_seed(1))
    expected = _real_block_outputs(model, decoder, ids)
    hidden, calls = capture_block_calls(model, decoder, ids)
    assert len(calls) == len(decoder.blocks) == 2
    with torch.no_grad():
        for block, call, want in zip(decoder.blocks, calls, expected):
            hidden = run_block(block, hidden, call)
            torch.testing.assert_close(hidden, want, rtol=0, atol=0)
    # The capture bypassed the blocks and left them callable as before.
    assert "forward" not in vars(decoder.blocks[0])


@pytest.mark.parametrize("arch, prefix, groups", [
    ("llama", "model.layers", [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]),
    ("opt", "model.decoder.layers", [["q_proj", "k_proj", "v_proj"], ["out_proj"], ["fc1"], ["fc2"]]),
    ("gpt2", "transformer.h", [["c_attn"], ["c_proj"], ["c_fc"], ["c_proj"]]),
    ("phi3", "model.layers", [["qkv_proj"], ["o_proj"], ["gate_up_proj"], ["down_proj"]]),
])
def test_blocks_and_groups_are_found_by_structure(arch, prefix, groups):
    model = tiny_model(arch)
    decoder = find_decoder(model)
    assert decoder.prefix == prefix
    ids = torch.randint(3, 512, (2, 12))
    hidden, calls = capture_block_calls(model, decoder, ids)
    found = linear_groups(decoder.blocks[0], decoder.linears(0), hidden, calls[0])
    assert [[name.rsplit(".", 1)[-1] for name in g] for g in found] == groups
    assert all(name.startswith(f"{prefix}.0.") for g in found for name in g)
    # lm_head and embeddings are never candidates.
    assert not any("lm_head" in n or "embed" in n for i in range(2) for n in decoder.linears(i))


def test_conv1d_weight_is_seen_as_out_by_in():
    model = tiny_model("gpt2")
    c_attn = find_decoder(model).blocks[0].attn.c_attn
    assert isinstance(c_attn, Conv1D)
    w = weight_matrix(c_attn)
    assert tuple(w.shape) == (96, 32)  # y = W x: 3 * hidden outputs, hidden inputs
    x = torch.randn(5, 32)
    torch.testing.assert_close(c_attn(x), x @ w.T + c_attn.bias)
    w[0, 0] = 0.0  # a view: writes reach the module
    assert c_attn.weight[0, 0] == 0.0


def test_unsupported_architecture_names_what_is_missing():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10)

    with pytest.raises(ModelError, match="no nn.ModuleList of decoder blocks containing nn.Linear or Conv1D"):
        find_decoder(Bag())


def test_a_forward_that_skips_the_blocks_is_a_model_error():
    class Skipper(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(2)])

        def forward(self, input_ids, use_cache=False):
            return input_ids

    model = Skipper()
    with pytest.raises(ModelError, match="did not call every block"):
        capture_block_calls(model, find_decoder(model), torch.zeros(1, 3, dtype=torch.long))


def test_context_length_comes_from_the_config():
    assert model_context(tiny_model("gpt2")) == 256
    assert model_context(tiny_model("llama")) == 256


# ---------------------------------------------------------------- loading


def test_load_the_real_fixture():
    model, tokenizer = load_model(str(fixture_path("stories260k")))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer("Once upon a time").input_ids[0] == 1  # BOS


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0")
    with pytest.raises(ModelError, match="is a file"):
        load_model(str(f))


def test_corrupt_weights_are_a_model_error(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fixture_path("stories260k"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(ModelError, match="cannot load a causal LM"):
        load_model(str(broken))


def test_unknown_architecture_in_config_is_a_model_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ThanosError):
        load_model(str(tmp_path))


def test_bad_dtype_is_an_input_error():
    with pytest.raises(InputError, match="dtype"):
        load_model(str(fixture_path("stories260k")), dtype="float8")


# ---------------------------------------------------------------- saving


def test_save_round_trips_and_refuses_to_clobber(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    out = tmp_path / "out"
    save_model(model, None, out)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 512, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    with pytest.raises(InputError, match="--overwrite"):
        save_model(model, None, out)
    save_model(model, None, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_an_existing_empty_directory_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    save_model(tiny_model("gpt2"), None, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file()


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = tiny_model("llama")

    def broken_save(directory, **kwargs):
        (directory / "config.json").write_text("{}")  # half written, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(model, "save_pretrained", broken_save)
    with pytest.raises(OSError):
        save_model(model, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_groups_found_while_accumulating_match_the_separate_pass(arch):
    """The one-step pipeline finds the groups in its accumulation run: the same groups
    as ``linear_groups`` and, per group, the Hessian of the leader's input over all
    batches (two batch sizes here, so two recorded calls)."""
    from thanos_rs.distributed import World
    from thanos_rs.pipeline import PruneConfig, _accumulate, _accumulate_grouped

    model = tiny_model(arch)
    decoder = find_decoder(model)
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randint(3, 512, (n, 12), generator=gen) for n in (2, 3)]
    hidden, calls = [], {}
    for ids in batches:
        h, per_block = capture_block_calls(model, decoder, ids)
        hidden.append(h)
        calls[len(ids)] = per_block
    block, linears = decoder.blocks[1], decoder.linears(1)
    block_calls = {n: c[1] for n, c in calls.items()}
    config = PruneConfig(hessian_dtype="float64")
    with torch.no_grad():
        groups, hessians = _accumulate_grouped(block, linears, hidden, block_calls, config, "cpu", World())
        assert groups == linear_groups(block, linears, hidden[0], block_calls[2])
        separate = _accumulate(block, [linears[g[0]] for g in groups], hidden, block_calls, config, "cpu", World())
    for got, want in zip(hessians, separate, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
