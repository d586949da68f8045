"""The bundled default model: loads offline, is small, tokenizes faithfully, and is good.

The model and text are produced by ``scripts/train_default_model.py``; these tests guard
the committed artefacts (a truncated file, a tokenizer that no longer round-trips or a
model that lost its training would all show up here).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from thanos_rs.default_assets import default_calibration_file, default_eval_file, default_model_dir  # noqa: E402

SEPARATOR = "<|endoftext|>"
SEQLEN = 256
EVAL_WINDOWS = 48  # 12k tokens: a couple of seconds on one CPU thread
# The bundled model scores 42.7 on this slice (55.6 on all of heldout.txt, see
# default_model/README.md; a unigram model scores 635). The bound leaves room for other
# torch builds while still catching an untrained, truncated or mis-tokenized model.
PPL_BOUND = 55.0


def read_documents(path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith(f"\n{SEPARATOR}\n")
    return text[: -len(f"\n{SEPARATOR}\n")].split(f"\n{SEPARATOR}\n")


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)


@pytest.fixture(scope="module")
def model():
    m = transformers.AutoModelForCausalLM.from_pretrained(
        default_model_dir(), dtype=torch.float32, local_files_only=True
    )
    return m.eval()


def test_files_present_and_small():
    model_dir = default_model_dir()
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "README.md"}
    assert expected <= {p.name for p in model_dir.iterdir()}
    for path in [*model_dir.iterdir(), default_calibration_file(), default_eval_file()]:
        assert path.stat().st_size < 10_000_000, path
    assert default_calibration_file().stat().st_size <= 1_000_000
    assert default_eval_file().stat().st_size <= 300_000


def test_data_files_hold_real_documents():
    calib, heldout = read_documents(default_calibration_file()), read_documents(default_eval_file())
    assert len(calib) > 1000 and len(heldout) > 100
    assert all(doc.strip() and SEPARATOR not in doc for doc in calib + heldout)
    assert not set(calib) & set(heldout), "held-out docstrings must not be in the training text"


def test_model_is_a_small_grouped_query_llama(model):
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Every pruned layer must admit the 2:4 and 4:8 patterns along its input dimension.
    for name, layer in model.model.layers.named_modules():
        if isinstance(layer, torch.nn.Linear):
            assert layer.in_features % 8 == 0, name


def test_tokenizer_round_trips_heldout_text(tokenizer, model):
    assert tokenizer.bos_token == tokenizer.eos_token == SEPARATOR
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == model.config.vocab_size
    for doc in read_documents(default_eval_file())[:50]:
        ids = tokenizer(doc)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
        assert tokenizer.decode(ids, skip_special_tokens=True) == doc


def heldout_windows(tokenizer) -> torch.Tensor:
    """The first EVAL_WINDOWS non-overlapping windows of the held-out stream, built as the
    training script builds it: every document encoded with its BOS, concatenated."""
    stream, needed = [], EVAL_WINDOWS * SEQLEN
    for doc in read_documents(default_eval_file()):
        stream += tokenizer(doc)["input_ids"]
        if len(stream) >= needed:
            break
    assert len(stream) >= needed
    return torch.tensor(stream[:needed]).view(EVAL_WINDOWS, SEQLEN)


def test_heldout_perplexity(tokenizer, model):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # polite on shared CI machines; the slice is small
    try:
        nll, count = 0.0, 0
        with torch.no_grad():
            for batch in heldout_windows(tokenizer).split(16):
                predicted = batch[:, 1:].numel()  # the loss averages over shifted targets
                nll += model(input_ids=batch, labels=batch).loss.item() * predicted
                count += predicted
    finally:
        torch.set_num_threads(threads)
    ppl = math.exp(nll / count)
    assert ppl < PPL_BOUND < len(tokenizer) / 10
