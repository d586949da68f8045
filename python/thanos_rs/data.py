"""Calibration and evaluation token streams, with the protocol that produced them.

Sources are C4 (``c4``), WikiText-2 raw (``wikitext2``), both through the
``datasets`` library, or a local file:

- ``.txt``: documents separated by a line that holds only ``<|endoftext|>``
  (the TinyStories / GPT-2 convention). A file without such a line is split
  on blank lines instead, each paragraph being one document.
- ``.jsonl``: one JSON object per line with a ``"text"`` field.

Calibration follows SparseGPT's protocol: with ``random.seed(seed)``, for each
sample pick a random document, retry until one is longer than ``seqlen``
tokens, and take a random ``seqlen`` window of it. WikiText-2 (and a local file
none of whose documents is long enough) is one joined token stream, and the
windows are drawn from that stream instead. Perplexity uses the
non-overlapping ``seqlen`` windows of the joined test text.

Every loader returns the tokens together with a ``protocol`` dict that the
report records, so a number can always be traced to the data behind it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import DataError

__all__ = ["Calibration", "EvalTokens", "load_calibration", "load_eval_tokens", "read_documents", "DOC_SEPARATOR"]

DOC_SEPARATOR = "<|endoftext|>"

# The files SparseGPT (and every paper that compares with it) calibrates and evaluates on.
C4_REPO = "allenai/c4"
C4_TRAIN_SHARD = "en/c4-train.00000-of-01024.json.gz"
WIKITEXT_REPO = "Salesforce/wikitext"
WIKITEXT_CONFIG = "wikitext-2-raw-v1"
HUB_SOURCES = ("c4", "wikitext2")


@dataclass
class Calibration:
    """``input_ids`` is (nsamples, seqlen), int64."""

    input_ids: torch.Tensor
    protocol: dict = field(default_factory=dict)


@dataclass
class EvalTokens:
    """``input_ids`` is one 1-D stream; perplexity windows are cut from it."""

    input_ids: torch.Tensor
    protocol: dict = field(default_factory=dict)


def load_calibration(source: str, tokenizer, nsamples: int, seqlen: int, seed: int = 0) -> Calibration:
    """``nsamples`` random windows of ``seqlen`` tokens from ``source``."""
    _check_counts(nsamples, seqlen)
    rng = random.Random(seed)
    if source == "c4":
        docs = _hub_texts("c4", "train")
        ids = _windows_from_documents(docs, tokenizer, nsamples, seqlen, rng, lazy=True, name="C4")
        protocol = {"dataset": C4_REPO, "data_file": C4_TRAIN_SHARD, "split": "train", "sampling": "documents"}
    elif source == "wikitext2":
        stream = _encode("\n\n".join(_hub_texts("wikitext2", "train")), tokenizer)
        ids = _windows_from_stream(stream, nsamples, seqlen, rng, name="WikiText-2 train")
        protocol = {"dataset": WIKITEXT_REPO, "config": WIKITEXT_CONFIG, "split": "train", "sampling": "stream"}
    else:
        ids, sampling = _windows_from_file(Path(source), tokenizer, nsamples, seqlen, rng)
        protocol = {"dataset": str(Path(source).resolve()), "split": "file", "sampling": sampling}
    protocol.update(nsamples=nsamples, seqlen=seqlen, seed=seed)
    return Calibration(ids, protocol)


def load_eval_tokens(source: str, tokenizer) -> EvalTokens:
    """The token stream perplexity is measured on (WikiText-2 test, or a local file)."""
    if source == "wikitext2":
        # The standard protocol: the whole test split joined by blank lines, tokenized once.
        stream = _encode("\n\n".join(_hub_texts("wikitext2", "test")), tokenizer)
        protocol = {"dataset": WIKITEXT_REPO, "config": WIKITEXT_CONFIG, "split": "test", "joining": "\\n\\n"}
    else:
        # Each document is tokenized on its own (so it starts with BOS where the
        # tokenizer adds one, as the model saw it in training), then concatenated.
        docs = read_documents(Path(source))
        stream = torch.cat([_encode(d, tokenizer) for d in docs])
        protocol = {"dataset": str(Path(source).resolve()), "split": "file", "joining": "per-document tokens"}
    protocol["tokens"] = int(stream.numel())
    return EvalTokens(stream, protocol)


def read_documents(path: Path) -> list[str]:
    """The non-empty documents of a .txt or .jsonl file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        known = ", ".join(HUB_SOURCES)
        raise DataError(f"data file {str(path)!r} does not exist; pass {known} or a path to a .txt or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read data file {str(path)!r} as UTF-8 text: {e}") from None
    docs = _jsonl_documents(text, path) if path.suffix.lower() == ".jsonl" else _txt_documents(text)
    if not docs:
        raise DataError(f"data file {str(path)!r} holds no text")
    return docs


def _txt_documents(text: str) -> list[str]:
    lines = text.splitlines()
    if any(line.strip() == DOC_SEPARATOR for line in lines):
        docs, current = [], []
        for line in lines:
            if line.strip() == DOC_SEPARATOR:
                docs.append("\n".join(current))
                current = []
            else:
                current.append(line)
        docs.append("\n".join(current))
    else:
        docs = text.split("\n\n")
    return [d.strip() for d in docs if d.strip()]


def _jsonl_documents(text: str, path: Path) -> list[str]:
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{number}: not valid JSON ({e.msg}); each line must be an object with a 'text' field"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{number}: each line must be a JSON object with a string 'text' field")
        if record["text"].strip():
            docs.append(record["text"])
    return docs


def _windows_from_file(path: Path, tokenizer, nsamples: int, seqlen: int, rng: random.Random):
    docs = read_documents(path)
    encoded = [_encode(d, tokenizer) for d in docs]
    if any(e.numel() > seqlen for e in encoded):
        ids = _windows_from_documents(encoded, tokenizer, nsamples, seqlen, rng, lazy=False, name=str(path))
        return ids, "documents"
    # Short documents (e.g. stories): draw the windows from the joined stream instead.
    return _windows_from_stream(torch.cat(encoded), nsamples, seqlen, rng, name=str(path)), "stream"


def _windows_from_documents(docs, tokenizer, nsamples, seqlen, rng, lazy: bool, name: str) -> torch.Tensor:
    """SparseGPT's C4 sampler; ``docs`` are texts (``lazy``) or token tensors."""
    too_short: set[int] = set()
    samples = []
    for _ in range(nsamples):
        while True:
            i = rng.randint(0, len(docs) - 1)
            enc = _encode(docs[i], tokenizer) if lazy else docs[i]
            if enc.numel() > seqlen:
                break
            too_short.add(i)
            if len(too_short) == len(docs):
                raise DataError(f"no document of {name} is longer than seqlen={seqlen} tokens; lower --seqlen")
        start = rng.randint(0, enc.numel() - seqlen - 1)
        samples.append(enc[start : start + seqlen])
    return torch.stack(samples)


def _windows_from_stream(stream: torch.Tensor, nsamples, seqlen, rng, name: str) -> torch.Tensor:
    if stream.numel() <= seqlen:
        raise DataError(
            f"{name} has only {stream.numel()} tokens, too few for one calibration window of seqlen={seqlen} "
            f"(needs at least {seqlen + 1}); use more text or a lower --seqlen"
        )
    starts = [rng.randint(0, stream.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([stream[s : s + seqlen] for s in starts])


def _encode(text: str, tokenizer) -> torch.Tensor:
    # verbose=False: texts longer than the model context are expected here (we cut windows).
    ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids
    return ids[0].to(torch.int64)


def _hub_texts(source: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:  # datasets is the optional 'data' extra
        raise DataError(f"{source!r} is loaded with the datasets package: pip install 'thanos-rs[data]', "
                        "or pass a local .txt/.jsonl file") from None
    try:
        if source == "c4":
            files = {"train": C4_TRAIN_SHARD}
            ds = datasets.load_dataset(C4_REPO, data_files=files, split="train")
        else:
            ds = datasets.load_dataset(WIKITEXT_REPO, WIKITEXT_CONFIG, split=split)
    except Exception as e:  # noqa: BLE001 - network, auth and cache errors all mean "not reachable"
        raise DataError(
            f"cannot load {source} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "check the network or pass a local .txt/.jsonl file instead"
        ) from None
    texts = ds["text"]
    return list(texts)


def _check_counts(nsamples: int, seqlen: int) -> None:
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 1:
        raise DataError(f"nsamples must be a positive integer (calibration sequences), got {nsamples!r}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 1:
        raise DataError(f"seqlen must be a positive integer (tokens per sequence), got {seqlen!r}")
