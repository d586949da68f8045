"""On a real model's layers, the methods rank as they should: OBS-style < Wanda < magnitude.

stories260K (a real 260K-parameter Llama trained on TinyStories) runs on 16
sequences of 256 tokens of real TinyStories text; forward hooks collect
H = (2/n) sum X X^T for every linear of two decoder layers, and each layer is
pruned on its own from the dense model's activations.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SEPARATOR, fixture_path

from thanos_rs import layer_loss, prune_layer, reference
from thanos_rs import spec as S

SEQUENCES, SEQLEN = 16, 256
DECODER_LAYERS = (1, 3)
BACKENDS = ["torch", "rust"]

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: no oversubscription


def calibration_tokens(tokenizer) -> torch.Tensor:
    """SEQUENCES x SEQLEN tokens of consecutive stories, each starting with BOS."""
    text = fixture_path("text", "tinystories_valid_500.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split(SEPARATOR) if s.strip()]
    ids: list[int] = []
    for story in stories:
        ids += tokenizer(story, verbose=False)["input_ids"]
        if len(ids) >= SEQUENCES * SEQLEN:
            break
    return torch.tensor(ids[: SEQUENCES * SEQLEN]).reshape(SEQUENCES, SEQLEN)


@pytest.fixture(scope="module")
def layers(stories_tokenizer) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (W, H) for every nn.Linear of the chosen decoder layers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fixture_path("stories260k"), dtype=torch.float32).eval()
    linears = {
        f"layers.{i}.{name}": module
        for i in DECODER_LAYERS
        for name, module in model.model.layers[i].named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in linears.items()}

    def accumulate(name):
        def hook(module, args, output):
            x = args[0].reshape(-1, module.in_features).double()
            sums[name] += x.T @ x

        return hook

    handles = [m.register_forward_hook(accumulate(name)) for name, m in linears.items()]
    with torch.no_grad():
        model(calibration_tokens(stories_tokenizer))
    for handle in handles:
        handle.remove()
    n = SEQUENCES * SEQLEN
    return {name: (m.weight.detach().clone(), (2 / n) * sums[name]) for name, m in linears.items()}


def losses(w, h, pattern, backend) -> dict[str, float]:
    return {
        method: prune_layer(w, h, method, pattern, 0.5, backend=backend).loss
        for method in ("thanos", "sparsegpt", "wanda", "magnitude")
    }


def per_row_magnitude_loss(w: torch.Tensor, h: torch.Tensor) -> float:
    """Magnitude pruning in Wanda's comparison group: 50% of every row, no update."""
    c, b = w.shape
    counts = [S.cumulative_share(0.5, b, k + 1) - S.cumulative_share(0.5, b, k) for k in range(c)]
    mask = torch.from_numpy(reference.smallest_per_row(w.abs().double().numpy(), counts))
    return layer_loss(w.double(), w.double().masked_fill(mask, 0.0), h)


def test_fixture_layers_are_collected(layers):
    assert len(layers) == 7 * len(DECODER_LAYERS)
    for w, h in layers.values():
        assert h.shape == (w.shape[1], w.shape[1]) and torch.isfinite(h).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_update_methods_beat_both_baselines(layers, backend, pattern):
    for name, (w, h) in layers.items():
        loss = losses(w, h, pattern, backend)
        for method in ("thanos", "sparsegpt"):
            assert loss[method] < min(loss["wanda"], loss["magnitude"]), f"{name} {pattern}: {loss}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_wanda_beats_magnitude_at_2_4(layers, backend):
    for name, (w, h) in layers.items():
        loss = losses(w, h, "2:4", backend)
        assert loss["wanda"] < loss["magnitude"], f"{name}: {loss}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_wanda_beats_magnitude_unstructured_in_the_same_comparison_group(layers, backend):
    """Unstructured Wanda removes 50% of every row; magnitude ranks the whole layer.

    On this model the per-row constraint costs more than Wanda's activation
    weighting gains on 10 of the 14 layers (q_proj: 0.018 vs 0.008; the sum
    over the layers: 0.80 vs 0.78), because rows (attention heads) differ a lot in how
    much they matter: the global ranking prunes the unimportant rows harder.
    That is the group ALGORITHM.md prescribes for each, not a kernel bug; the
    score itself is compared here, with magnitude given Wanda's group.
    """
    for name, (w, h) in layers.items():
        wanda = prune_layer(w, h, "wanda", "unstructured", 0.5, backend=backend).loss
        assert wanda < per_row_magnitude_loss(w, h), name
