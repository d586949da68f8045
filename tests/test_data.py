"""Calibration and evaluation data: file formats, the sampling protocol, the hub loaders."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import SEPARATOR, stories_subset

from thanos_rs import data
from thanos_rs.data import load_calibration, load_eval_tokens, read_documents
from thanos_rs.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_documents_split_on_the_separator_line(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(f"one\n\npara two\n{SEPARATOR}\n  \n{SEPARATOR}\nthree\n{SEPARATOR}\n")
    assert read_documents(f) == ["one\n\npara two", "three"]


def test_without_separator_paragraphs_are_documents(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first paragraph\nstill first\n\nsecond\n\n\n")
    assert read_documents(f) == ["first paragraph\nstill first", "second"]


def test_jsonl_reads_the_text_field(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "hello", "id": 1}) + "\n\n" + json.dumps({"text": "world"}) + "\n")
    assert read_documents(f) == ["hello", "world"]


@pytest.mark.parametrize("line, message", [("not json", "not valid JSON"), ('{"content": "x"}', "'text' field")])
def test_bad_jsonl_names_the_line(tmp_path, line, message):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"a.jsonl:2: .*{message}"):
        read_documents(f)


@pytest.mark.parametrize("content", ["", "\n\n  \n", f"{SEPARATOR}\n{SEPARATOR}\n"])
def test_empty_file_is_a_data_error(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(DataError, match="holds no text"):
        read_documents(f)


def test_missing_file_says_what_is_accepted(tmp_path):
    with pytest.raises(DataError, match="c4, wikitext2 or a path"):
        load_calibration(str(tmp_path / "nope.txt"), None, 4, 16)


def test_calibration_windows_are_seeded_document_windows(small_text, stories_tokenizer):
    a = load_calibration(str(small_text), stories_tokenizer, 8, 64, seed=0)
    b = load_calibration(str(small_text), stories_tokenizer, 8, 64, seed=0)
    c = load_calibration(str(small_text), stories_tokenizer, 8, 64, seed=1)
    assert a.input_ids.shape == (8, 64) and a.input_ids.dtype == torch.int64
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.protocol == {"dataset": str(small_text.resolve()), "split": "file", "sampling": "documents",
                          "nsamples": 8, "seqlen": 64, "seed": 0}
    # Each window lies inside one story (SparseGPT's protocol): it is a slice of some document.
    docs = [stories_tokenizer(d).input_ids for d in read_documents(small_text)]
    for window in a.input_ids.tolist():
        assert any(_contains(doc, window) for doc in docs)


def test_sampler_follows_sparsegpt_draw_order(tmp_path, stories_tokenizer):
    # SparseGPT: random.seed(seed); per sample draw a document until one is longer than
    # seqlen, then draw the window start in [0, len - seqlen - 1].
    f = stories_subset(tmp_path / "s.txt", 5)
    docs = [torch.tensor(stories_tokenizer(d).input_ids) for d in read_documents(f)]
    rng, expected = random.Random(3), []
    for _ in range(4):
        while True:
            doc = docs[rng.randint(0, len(docs) - 1)]
            if doc.numel() > 100:
                break
        start = rng.randint(0, doc.numel() - 100 - 1)
        expected.append(doc[start:start + 100])
    got = load_calibration(str(f), stories_tokenizer, 4, 100, seed=3).input_ids
    assert torch.equal(got, torch.stack(expected))


def test_short_documents_fall_back_to_the_joined_stream(tmp_path, stories_tokenizer):
    f = stories_subset(tmp_path / "s.txt", 20)
    calib = load_calibration(str(f), stories_tokenizer, 4, 2000)  # every story is shorter
    assert calib.input_ids.shape == (4, 2000)
    assert calib.protocol["sampling"] == "stream"


def test_too_short_calibration_text(tmp_path, stories_tokenizer):
    f = tmp_path / "tiny.txt"
    f.write_text("Once upon a time.\n")
    with pytest.raises(DataError, match="too few for one calibration window of seqlen=64"):
        load_calibration(str(f), stories_tokenizer, 4, 64)


@pytest.mark.parametrize("nsamples, seqlen", [(0, 16), (-1, 16), (4, 0), (True, 16)])
def test_counts_must_be_positive(small_text, nsamples, seqlen):
    with pytest.raises(DataError, match="positive integer"):
        load_calibration(str(small_text), None, nsamples, seqlen)


def test_eval_tokens_start_each_document_with_bos(small_text, stories_tokenizer):
    tokens = load_eval_tokens(str(small_text), stories_tokenizer)
    ids = tokens.input_ids
    assert ids.dim() == 1 and ids[0] == stories_tokenizer.bos_token_id
    assert int((ids == stories_tokenizer.bos_token_id).sum()) == 40
    assert tokens.protocol["tokens"] == ids.numel()


# ---------------------------------------------------------------- hub sources, offline


class _FakeHub:
    """Stands in for datasets.load_dataset; records the calls it answers."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def __call__(self, path, name=None, **kwargs):
        import datasets

        self.calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"text": self.texts})


def test_c4_uses_the_first_english_train_shard(monkeypatch, small_text, stories_tokenizer):
    import datasets

    hub = _FakeHub(read_documents(small_text))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    calib = load_calibration("c4", stories_tokenizer, 4, 64, seed=0)
    assert hub.calls == [("allenai/c4", None, {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"},
                                               "split": "train"})]
    # Same documents, same seed: the same windows as from the local file.
    assert torch.equal(calib.input_ids, load_calibration(str(small_text), stories_tokenizer, 4, 64, seed=0).input_ids)
    assert calib.protocol["dataset"] == "allenai/c4" and calib.protocol["sampling"] == "documents"


def test_wikitext2_joins_the_split(monkeypatch, stories_tokenizer):
    import datasets

    hub = _FakeHub([" = Title = \n", "", " Some text here that is long enough . \n"] * 50)
    monkeypatch.setattr(datasets, "load_dataset", hub)
    calib = load_calibration("wikitext2", stories_tokenizer, 3, 32)
    tokens = load_eval_tokens("wikitext2", stories_tokenizer)
    assert [c[:2] for c in hub.calls] == [("Salesforce/wikitext", "wikitext-2-raw-v1")] * 2
    assert [c[2]["split"] for c in hub.calls] == ["train", "test"]
    assert calib.protocol["sampling"] == "stream" and tokens.protocol["split"] == "test"
    expected = stories_tokenizer("\n\n".join(hub.texts), return_tensors="pt").input_ids[0]
    assert torch.equal(tokens.input_ids, expected)


def test_unreachable_hub_is_a_data_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="cannot load c4 from the Hugging Face hub.*local .txt/.jsonl"):
        data.load_calibration("c4", None, 4, 16)


def _contains(seq: list[int], window: list[int]) -> bool:
    n = len(window)
    return any(seq[i:i + n] == window for i in range(len(seq) - n + 1))
