"""Shared fixtures: paths to the real fixtures in ``<repo>/../shared/fixtures``, tiny models.

The fixtures live beside the repository (they are test data, not product data),
so their paths are computed from this file, never from the working directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"
STORIES_MODEL = FIXTURES / "stories260k"
STORIES_TEXT = FIXTURES / "text" / "tinystories_valid_500.txt"
SEPARATOR = "<|endoftext|>"

# One small shape for every architecture; vocab 512 so the stories260k tokenizer fits.
TINY = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "opt", "gpt2")


def fixture_path(*parts: str) -> Path:
    """A path under the shared fixtures; skips the test when the fixtures are not checked out."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is missing")
    return path


def stories_subset(path: Path, n: int) -> Path:
    """Write the first ``n`` stories of the text fixture to ``path`` (same layout)."""
    text = fixture_path("text", "tinystories_valid_500.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split(SEPARATOR) if s.strip()][:n]
    path.write_text("".join(f"{s}\n{SEPARATOR}\n" for s in stories), encoding="utf-8")
    return path


def tiny_config(arch: str):
    """A 2-block, hidden-32 config of ``arch`` built from transformers' config classes."""
    import transformers as T

    base = dict(TINY)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=512, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "opt":
        base.pop("intermediate_size")
        base.pop("num_key_value_heads")
        return T.OPTConfig(ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=256, **base)
    classes = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config, "qwen3": T.Qwen3Config,
               "gemma": T.GemmaConfig, "gemma2": T.Gemma2Config, "phi3": T.Phi3Config}
    extra = {"max_position_embeddings": 256}
    if arch in ("qwen3", "gemma", "gemma2"):
        extra["head_dim"] = 8
    if arch in ("mistral", "gemma2"):
        extra["sliding_window"] = 16  # shorter than the test sequences: sliding masks really differ
    if arch == "qwen3":
        extra.update(use_sliding_window=True, sliding_window=16, max_window_layers=1)
    return classes[arch](**base, **extra)


def tiny_model(arch: str, seed: int = 0, **config_overrides):
    import torch
    import transformers

    config = tiny_config(arch)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def random_llama_dir(path: Path, layers: int, hidden: int = 512, intermediate: int = 1536,
                     max_shard_size: str = "100MB") -> Path:
    """A random-initialised Llama checkpoint (sharded safetensors) with the stories260k tokenizer."""
    import shutil

    import torch
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                           max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(path, max_shard_size=max_shard_size)
    for tokenizer_file in fixture_path("stories260k").glob("tokenizer*"):
        shutil.copy(tokenizer_file, path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """The test machine's cores are shared: one intra-op thread avoids oversubscription stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``<repo>/../shared/fixtures``."""
    return fixture_path()


@pytest.fixture(scope="session")
def stories_model_dir() -> Path:
    """The real pretrained stories260k Llama, in Hugging Face format."""
    return fixture_path("stories260k")


@pytest.fixture(scope="session")
def stories_text_file() -> Path:
    """500 TinyStories validation stories, each followed by a line ``<|endoftext|>``."""
    return fixture_path("text", "tinystories_valid_500.txt")


@pytest.fixture(scope="session")
def stories_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixture_path("stories260k"))


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """The first 40 stories (about 15k tokens): enough for calibration and a quick perplexity."""
    return stories_subset(tmp_path_factory.mktemp("text") / "stories40.txt", 40)
