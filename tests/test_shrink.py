"""Structured export (GatherLinear / RowSplitLinear) and the MLP shrink.

Tolerance: the exported layers add fewer terms, in another order, than the
dense matmul over the zeroed columns: rtol 1e-5, atol 1e-6 per layer and
1e-5 on logits, in float32. A save/load round trip of a shrunk model is exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_export import pruned_model
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from thanos_rs import shrink
from thanos_rs.errors import ModelError, ThanosError
from thanos_rs.model import decoder_linears, weight_matrix

IDS = torch.tensor([[1, 7, 3, 99, 42, 5, 250, 11], [4, 4, 8, 15, 16, 23, 42, 0]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_split_structured_reproduces_each_layer(alpha):
    model = pruned_model("structured", sparsity=0.3, alpha=alpha)
    for name, module in decoder_linears(model).items():
        c, b = weight_matrix(module).shape
        new = shrink.split_structured(name, module)
        assert isinstance(new, shrink.RowSplitLinear) == (alpha > 0)
        assert new.kept.numel() == b - min(b, math.ceil(0.3 * b / (1 - alpha) - 1e-9))
        if alpha > 0:
            assert new.outlier_rows.numel() == math.ceil(alpha * c)
        x = torch.randn(2, 3, b)
        with torch.no_grad():
            torch.testing.assert_close(new(x), module(x), rtol=1e-5, atol=1e-6)


def test_split_structured_handles_conv1d_and_bias():
    torch.manual_seed(0)
    conv = Conv1D(12, 16)  # GPT-2 layout: weight is (in, out) = W^T
    with torch.no_grad():
        conv.bias.normal_()
        conv.weight[[1, 4, 9]] = 0.0  # inputs 1, 4, 9 removed ...
        conv.weight[[4], 2] = 0.7  # ... except in outlier row (output) 2 for input 4
    new = shrink.split_structured("conv", conv)
    assert new.kept.tolist() == [i for i in range(16) if i not in (1, 4, 9)]
    assert new.outlier_rows.tolist() == [2] and new.removed.tolist() == [4]
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(new(x), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pattern", [None, "unstructured", "2:4"])
def test_split_structured_rejects_other_layers(pattern):
    module = pruned_model(pattern).model.layers[0].self_attn.q_proj
    with pytest.raises(ThanosError, match="layer q is not structured-pruned"):
        shrink.split_structured("q", module)
    with pytest.raises(ThanosError, match="no structured-pruned linear"):
        shrink.export_structured(pruned_model(pattern))


def test_export_structured_model_matches():
    model = pruned_model("structured", sparsity=0.3, alpha=0.1)
    expected = logits(model)
    exported = shrink.export_structured(model)
    assert len(exported) == len(decoder_linears(pruned_model(None)))
    assert isinstance(model.model.layers[0].mlp.down_proj, shrink.RowSplitLinear)
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)


def test_shrink_mlp_gives_a_standard_smaller_model(tmp_path):
    model = pruned_model("structured", sparsity=0.5)
    expected = logits(model)
    needed = shrink.shrink_mlp(model)
    assert set(needed.values()) == {32}  # 64 - ceil(0.5 * 64) channels live in every layer
    assert model.config.intermediate_size == 32
    assert model.model.layers[1].mlp.gate_proj.weight.shape == (32, 32)
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "small")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert reloaded.config.intermediate_size == 32
    assert torch.equal(logits(reloaded), logits(model))
    # Then the attention and gate/up input columns: still the same function.
    shrink.export_structured(model)
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)


def test_shrink_mlp_pads_layers_to_one_size():
    model = pruned_model("structured", sparsity=0.5)
    down = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        down[:, down.abs().sum(0).argmax()] = 0.0  # layer 1 loses one more channel
    expected = logits(model)
    needed = shrink.shrink_mlp(model)
    assert sorted(needed.values()) == [31, 32]
    assert model.model.layers[1].mlp.down_proj.in_features == 32  # padded with one all-zero channel
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)


def test_shrink_mlp_errors():
    with pytest.raises(ModelError, match="no gated MLP"):
        shrink.shrink_mlp(pruned_model("structured", arch="gpt2"))
    model = pruned_model("structured", sparsity=0.5)
    shrink.export_structured(model)  # wrong order: the MLP linears are no longer nn.Linear
    with pytest.raises(ModelError, match="before export_structured"):
        shrink.shrink_mlp(model)


def test_square_mlp_finds_down_by_name_and_shrinks_correctly():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    assert shrink.gated_mlps(model) == {"model.layers.0.mlp": ("gate_proj", "up_proj", "down_proj")}
    down = model.model.layers[0].mlp.down_proj
    with torch.no_grad():
        down.weight[:, :20] = 0.0
        ids = torch.arange(16).unsqueeze(0)
        want = model(ids).logits
        shrink.shrink_mlp(model)
        torch.testing.assert_close(model(ids).logits, want)
    assert model.config.intermediate_size == 44


def test_shrink_of_a_model_without_gated_mlp_fails_before_any_work(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from thanos_rs import PruneConfig, prune_model

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = PruneConfig(pattern="structured", sparsity=0.3, shrink=True, save=str(tmp_path / "out"), eval=[])
    with pytest.raises(ModelError, match="no gated MLP"):
        prune_model(model, None, config, calibration=torch.randint(0, 64, (2, 16)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "out").exists()
