"""2:4 codec and the outlier split on CPU; the semi-structured GPU conversion where CUDA exists.

Tolerances: the split module adds the outlier rows' residual in a second matmul,
so its outputs differ from the dense layer's by float summation order only
(rtol 1e-5, atol 1e-6 in float32). On the GPU, float16 sparse kernels: atol 2e-2.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export import pruned_model

from thanos_rs import sparse24
from thanos_rs.errors import ThanosError
from thanos_rs.model import weight_matrix

IDS = torch.tensor([[1, 7, 3, 99, 42, 5, 250, 11]])


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), count=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_codes_round_trip(bits, count, seed):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(seed))
    packed = sparse24.pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count * bits / 8)
    assert torch.equal(sparse24.unpack_codes(packed, bits, count), codes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_nm_compress_round_trip_24(dtype):
    w = pruned_model("2:4", dtype=dtype).model.layers[0].mlp.down_proj.weight.detach()
    assert sparse24.nm_rows(w, 2, 4).all()
    values, positions = sparse24.nm_compress(w, 2, 4)
    assert values.shape == (w.shape[0], w.shape[1] // 2) and positions.shape == (w.shape[0], w.shape[1] // 4, 2)
    assert int(positions.max()) < 4 and bool((positions[..., 0] < positions[..., 1]).all())
    # 2 bits per kept value: an eighth of a byte per dense weight.
    assert sparse24.pack_codes(positions, 2).numel() * 8 == w.numel()
    assert torch.equal(sparse24.nm_decompress(values, positions, 2, 4, w.shape[1]), w)


def test_outlier_split_reproduces_the_layer():
    model = pruned_model("2:4", alpha=0.1)
    for name, module in sparse24.decoder_linears(model).items():
        split = sparse24.split_outliers(name, module)
        c, b = weight_matrix(module).shape
        x = torch.randn(3, 5, b)
        assert split.outlier_rows.numel() == math.ceil(0.1 * c)
        assert sparse24.nm_rows(split.sparse_weight, 2, 4).all()  # every row hardware-valid, outliers included
        assert split.outlier_residual.shape == (split.outlier_rows.numel(), b)
        with torch.no_grad():
            torch.testing.assert_close(split(x), module(x), rtol=1e-5, atol=1e-6)


def test_split_model_matches_pruned_model():
    model = pruned_model("2:4", alpha=0.1)
    with torch.no_grad():
        expected = model(IDS).logits
        for name, module in sparse24.decoder_linears(model).items():
            sparse24.replace_module(model, name, sparse24.split_outliers(name, module))
        assert isinstance(model.model.layers[1].self_attn.o_proj, sparse24.OutlierSplitLinear)
        torch.testing.assert_close(model(IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_split_rejects_weights_that_are_not_24():
    model = pruned_model("unstructured")
    module = model.model.layers[0].mlp.up_proj
    with pytest.raises(ThanosError, match="layer model.layers.0.mlp.up_proj is not 2:4 sparse"):
        sparse24.split_outliers("model.layers.0.mlp.up_proj", module)
    odd = torch.nn.Linear(6, 4)
    with pytest.raises(ThanosError, match="layer odd has 6 inputs"):
        sparse24.split_outliers("odd", odd)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_to_semi_structured_needs_cuda():
    with pytest.raises(ThanosError, match="needs a CUDA GPU"):
        sparse24.to_semi_structured(pruned_model("2:4"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's 2:4 semi-structured kernels are CUDA-only")
def test_to_semi_structured_on_gpu():
    import transformers

    # The sparse kernels need rows % 32 == 0 and columns % 64 == 0: a wider tiny Llama.
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    for module in sparse24.decoder_linears(model).values():
        w = module.weight.data
        groups = w.view(w.shape[0], -1, 4)
        groups.scatter_(-1, groups.abs().argsort(-1)[..., :2], 0.0)  # magnitude 2:4
        w[:3] = torch.randn_like(w[:3])  # three dense outlier rows
    model = model.to("cuda", torch.float16)
    ids = IDS.clamp(max=127).cuda()
    pruned = {name: module.weight.data.clone() for name, module in sparse24.decoder_linears(model).items()}
    with torch.no_grad():
        expected = model(ids).logits
        outliers = sparse24.to_semi_structured(model)
        assert set(outliers.values()) == {3}
        split = model.model.layers[0].mlp.down_proj
        assert isinstance(split.sparse_weight, torch.sparse.SparseSemiStructuredTensor)
        # Decompressed 2:4 part plus the outlier rows' residual is the pruned weight, bit for bit.
        rebuilt = split.sparse_weight.to_dense()
        rebuilt[split.outlier_rows] += split.outlier_residual
        assert torch.equal(rebuilt, pruned["model.layers.0.mlp.down_proj"])
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to reach the dtype check")
def test_to_semi_structured_rejects_float32_on_gpu():
    model = pruned_model("2:4").cuda()
    with pytest.raises(ThanosError, match="float16 or bfloat16"):
        sparse24.to_semi_structured(model)
