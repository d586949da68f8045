#!/usr/bin/env python3
"""Train the small Llama that ships in ``thanos_rs`` as the default pruning target.

The model learns the docstrings of the running interpreter's standard library: real
English prose that may be redistributed (PSF license) and needs no network. One run
writes every committed artefact:

- ``--out``: config, float16 safetensors weights, a byte-level BPE tokenizer, README.md;
- ``--data-out``: ``train.txt`` (a calibration subset of the training text),
  ``heldout.txt`` (the held-out docstrings), the PSF ``LICENSE.txt`` and README.md.

Reproduce the committed model with the defaults::

    python scripts/train_default_model.py \\
        --out python/thanos_rs/default_model --data-out python/thanos_rs/default_data

Everything random is seeded and training runs on one CPU thread, so the run is
deterministic on a given machine and library version. ``--minutes`` trades that away
for a wall-clock budget (the step count is then derived from the measured step time).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import pathlib
import platform
import random
import re
import shutil
import sysconfig
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEPARATOR = "<|endoftext|>"  # document separator in the data files; also the BOS/EOS token
PAD = "<|pad|>"
# Directories that are tests, GUI demos, deprecated vendored code or third-party packages.
SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__"}
MIN_CHARS = 40  # one-liners like "Return self." teach little and skew the text towards stubs
MAX_NON_ASCII = 0.02
HELDOUT_PERCENT = 8
SEQLEN = 256


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, required=True, help="model + tokenizer directory")
    p.add_argument("--data-out", type=pathlib.Path, required=True, help="train.txt / heldout.txt directory")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (default reproduces the bundled model)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget instead of a fixed step count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--eval-every", type=int, default=300, help="steps between held-out evaluations")
    p.add_argument("--calib-bytes", type=int, default=500_000, help="size cap of train.txt")
    return p.parse_args()


# ---------------------------------------------------------------- corpus


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: pathlib.Path) -> list[pathlib.Path]:
    """The stdlib's .py files outside skipped directories, sorted by relative path."""
    keep = []
    for path in root.rglob("*.py"):
        dirs = path.relative_to(root).parts[:-1]
        # config-3.x-<platform> holds build scripts, not library modules.
        if not any(d in SKIP_DIRS or d.startswith("config-") for d in dirs):
            keep.append(path)
    return sorted(keep, key=lambda p: p.relative_to(root).as_posix())


def file_docstrings(path: pathlib.Path) -> list[str]:
    """Module, class and function docstrings of one file, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # a few stdlib files are deliberately not valid Python 3 or UTF-8
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, kinds) and (doc := ast.get_docstring(node)):
            found.append((getattr(node, "lineno", 0), doc))
    return [doc for _, doc in sorted(found, key=lambda t: t[0])]


def is_useful(doc: str) -> bool:
    non_ascii = sum(ord(c) > 127 for c in doc)
    return len(doc) >= MIN_CHARS and non_ascii <= MAX_NON_ASCII * len(doc) and SEPARATOR not in doc


def is_heldout(relpath: str) -> bool:
    """Split by source file (not by docstring) so held-out text is from unseen modules."""
    digest = hashlib.sha256(relpath.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def collect_corpus(root: pathlib.Path) -> tuple[list[str], list[str]]:
    """(train, heldout) docstrings, deduplicated across the whole stdlib in path order."""
    seen: set[str] = set()
    train, heldout = [], []
    for path in stdlib_sources(root):
        rel = path.relative_to(root).as_posix()
        for doc in file_docstrings(path):
            if is_useful(doc) and doc not in seen:
                seen.add(doc)
                (heldout if is_heldout(rel) else train).append(doc)
    return train, heldout


def calibration_subset(docs: list[str], max_bytes: int, seed: int) -> list[str]:
    """A seeded sample of whole documents spread over the stdlib, capped in size, in corpus order."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    chosen, size = [], 0
    for i in order:
        n = len(document_block(docs[i]).encode())
        if size + n <= max_bytes:
            chosen.append(i)
            size += n
    return [docs[i] for i in sorted(chosen)]


def psf_notice(license_text: str) -> str:
    """The copyright notice that the PSF License Agreement says must be retained."""
    match = re.search(r'i\.e\., "(Copyright \(c\) .*?All Rights Reserved)"', license_text, re.DOTALL)
    if match is None:
        raise SystemExit("could not find the PSF copyright notice in the stdlib's LICENSE.txt")
    return " ".join(match.group(1).split())


def document_block(doc: str) -> str:
    return f"{doc}\n{SEPARATOR}\n"


def write_documents(path: pathlib.Path, docs: list[str]) -> None:
    path.write_text("".join(document_block(d) for d in docs), encoding="utf-8")


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style, so any text encodes) that prepends BOS like Llama's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SEPARATOR, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    bos_id = tok.token_to_id(SEPARATOR)
    # BOS on every encoded document mirrors how Llama tokenizers (and the stories260k
    # fixture) behave, so callers can tokenize documents one by one and concatenate.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SEPARATOR} $A", pair=f"{SEPARATOR} $A {SEPARATOR} $B", special_tokens=[(SEPARATOR, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SEPARATOR,
        eos_token=SEPARATOR,
        unk_token=SEPARATOR,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,  # otherwise decode() would not round-trip
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: pathlib.Path) -> None:
    tokenizer.save_pretrained(out)
    # transformers 5 records its new class name "TokenizersBackend", which 4.x cannot
    # resolve; the classic name loads in both.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    # Recent transformers keep special tokens only in tokenizer_config.json; older
    # readers (and people) look for the classic map too.
    special = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def encode_stream(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> torch.Tensor:
    """All documents as one token stream, each starting with BOS (which also ends the previous one)."""
    ids = tokenizer(docs)["input_ids"]
    return torch.tensor([t for doc in ids for t in doc], dtype=torch.long)


# ---------------------------------------------------------------- model and training


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    # intermediate 688 is divisible by 4 and 8, so every linear layer admits 2:4 and 4:8.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in real Llamas
        max_position_embeddings=2 * SEQLEN,
        rope_theta=10000.0,
        tie_word_embeddings=False,  # every weight explicit: simpler for the pruning backends
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    # Decay matrices only: decaying norm gains just fights the normalisation.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def random_batch(stream: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - SEQLEN, (batch_size,), generator=gen)
    return torch.stack([stream[s : s + SEQLEN] for s in starts.tolist()])


def train_step(model, opt, batch: torch.Tensor, lr: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(input_ids=batch, labels=batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def train(model, stream: torch.Tensor, heldout: torch.Tensor, args: argparse.Namespace) -> tuple[int, float]:
    """Run the optimisation, reporting held-out perplexity now and then; returns (steps, seconds)."""
    gen = torch.Generator().manual_seed(args.seed)
    opt = make_optimizer(model, args.lr)
    model.train()
    total, start = args.steps, time.perf_counter()
    step = 0
    while step < total:
        loss = train_step(model, opt, random_batch(stream, args.batch_size, gen), lr_at(step, total, args.lr))
        step += 1
        elapsed = time.perf_counter() - start
        if args.minutes is not None and step == 20:
            # Budget mode: fix the schedule length once the step time is known.
            total = max(step + 1, int(args.minutes * 60 / (elapsed / step)))
            print(f"budget {args.minutes} min -> {total} steps")
        if step % 100 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.3f} lr {lr_at(step - 1, total, args.lr):.2e} {elapsed:.0f}s", flush=True)
        if step % args.eval_every == 0:
            # Watch for overfitting: the corpus is small and is seen several times.
            print(f"  held-out perplexity {perplexity(model, heldout):.2f}", flush=True)
            model.train()
    return total, time.perf_counter() - start


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token NLL) over non-overlapping SEQLEN windows (remainder dropped)."""
    model.eval()
    n = len(stream) // SEQLEN
    windows = stream[: n * SEQLEN].view(n, SEQLEN)
    nll, count = 0.0, 0
    for batch in windows.split(batch_size):
        logits = model(input_ids=batch).logits[:, :-1]
        targets = batch[:, 1:]
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    return math.exp(nll / count)


def unigram_perplexity(train_stream: torch.Tensor, eval_stream: torch.Tensor, vocab: int) -> float:
    """Baseline: token frequencies of the training stream (add-one smoothed)."""
    counts = torch.bincount(train_stream, minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[eval_stream].mean().item())


# ---------------------------------------------------------------- outputs


def save_model(model: LlamaForCausalLM, out: pathlib.Path) -> None:
    # float16 halves the package size; loaders upcast with dtype=torch.float32.
    model.to(torch.float16).save_pretrained(out)


def model_readme(facts: dict) -> str:
    return f"""# Default model: a small Llama trained on Python standard-library docstrings

The model that `thanos-rs` prunes when it is run with no model argument. It is a real
causal language model, trained from scratch by this repository, not downloaded.

| property | value |
| --- | --- |
| architecture | `LlamaForCausalLM`: hidden 256, 4 layers, 4 attention heads, 2 KV heads (grouped-query), MLP 688, RoPE, RMSNorm, untied embeddings |
| parameters | {facts['parameters']:,} |
| weights | `model.safetensors`, float16, {facts['weight_bytes']:,} bytes (load with `dtype=torch.float32`) |
| tokenizer | byte-level BPE, {facts['vocab']:,} tokens, trained on the training split; `<|endoftext|>` is BOS/EOS/UNK (prepended to every encoded text), `<|pad|>` pads |
| context | trained on {SEQLEN}-token windows; `max_position_embeddings` {2 * SEQLEN} |
| training | {facts['steps']:,} AdamW steps of {facts['batch_size']} x {SEQLEN} tokens, peak lr {facts['lr']}, cosine schedule, seed {facts['seed']}, 1 CPU thread, {facts['minutes']:.1f} min |
| training text | {facts['train_docs']:,} docstrings, {facts['train_tokens']:,} tokens |
| held-out perplexity | **{facts['ppl']:.2f}** (float16 weights loaded as float32; non-overlapping {SEQLEN}-token windows of `default_data/heldout.txt`, {facts['heldout_tokens']:,} tokens; a unigram model scores {facts['unigram_ppl']:.1f}) |

## Provenance

Produced by `scripts/train_default_model.py` with

```
{facts['command']}
```

on {facts['platform']}, torch {torch.__version__}.

## Data and license

The training text is the module, class and function docstrings of the CPython
{facts['python']} standard library (the interpreter that ran the script), collected with
`ast` and filtered as described in `../default_data/README.md`. That text is
Copyright (c) Python Software Foundation, distributed under the PSF License Agreement
(full text: `../default_data/LICENSE.txt`); the model is a derivative of it.
"""


def data_readme(facts: dict) -> str:
    return f"""# Default calibration and evaluation text

Real English text for the default model in `../default_model/`: the docstrings of the
CPython {facts['python']} standard library.

- `train.txt`: {facts['calib_docs']:,} docstrings ({facts['calib_bytes']:,} bytes), a seeded sample
  of the model's training split. Use it for calibration.
- `heldout.txt`: all {facts['heldout_docs']:,} held-out docstrings ({facts['heldout_bytes']:,} bytes),
  never seen in training (neither by the model nor by the tokenizer). Use it for evaluation.

**Format**: each docstring is followed by a line that holds only `<|endoftext|>`, i.e. the
file is a run of `doc + "\\n<|endoftext|>\\n"`, the same layout as TinyStories' text files.
Split on the separator:

```python
docs = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
```

**Collection** (`scripts/train_default_model.py`): every `.py` file under the
interpreter's `sysconfig.get_paths()["stdlib"]`, except directories named
{', '.join(f'`{d}`' for d in sorted(SKIP_DIRS))} and `config-*`; the docstrings of
modules, classes and functions via `ast.get_docstring` (indentation cleaned), in path and
line order; kept if at least {MIN_CHARS} characters long, at most {MAX_NON_ASCII:.0%} non-ASCII, and not
already seen (exact duplicates removed across the whole library). A docstring is
held out when the first 4 bytes of the SHA-256 of its file's path (relative to the stdlib
root), read as a big-endian integer, are below {HELDOUT_PERCENT} modulo 100; so held-out text comes
from modules the model never saw.

## License

The text is from the CPython {facts['python']} source distribution:
{facts['psf_notice']}. It is redistributed under the PSF License Agreement, whose full text (with the history and the
other licenses involved) is `LICENSE.txt` in this directory, copied from that
interpreter's standard library.
"""


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # polite on shared machines, and keeps the run deterministic
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_out.mkdir(parents=True, exist_ok=True)

    train_docs, heldout_docs = collect_corpus(stdlib_root())
    calib_docs = calibration_subset(train_docs, args.calib_bytes, args.seed)
    write_documents(args.data_out / "train.txt", calib_docs)
    write_documents(args.data_out / "heldout.txt", heldout_docs)
    # The PSF license requires its text and notice to travel with redistributed text.
    shutil.copyfile(stdlib_root() / "LICENSE.txt", args.data_out / "LICENSE.txt")
    notice = psf_notice((stdlib_root() / "LICENSE.txt").read_text(encoding="utf-8"))
    print(f"docstrings: {len(train_docs)} train, {len(heldout_docs)} held out, {len(calib_docs)} calibration")

    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    save_tokenizer(tokenizer, args.out)
    train_stream, heldout_stream = encode_stream(tokenizer, train_docs), encode_stream(tokenizer, heldout_docs)
    print(f"tokens: {len(train_stream)} train, {len(heldout_stream)} held out")

    model = build_model(tokenizer, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")
    steps, seconds = train(model, train_stream, heldout_stream, args)
    save_model(model, args.out)

    # Score what ships: the float16 file as users load it.
    shipped = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    ppl = perplexity(shipped, heldout_stream)
    unigram = unigram_perplexity(train_stream, heldout_stream, len(tokenizer))
    print(f"held-out perplexity {ppl:.2f} (unigram {unigram:.1f}); trained {steps} steps in {seconds / 60:.1f} min")

    facts = {
        "parameters": n_params,
        "weight_bytes": (args.out / "model.safetensors").stat().st_size,
        "vocab": len(tokenizer),
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "minutes": seconds / 60,
        "train_docs": len(train_docs),
        "train_tokens": len(train_stream),
        "heldout_tokens": len(heldout_stream),
        "heldout_docs": len(heldout_docs),
        "heldout_bytes": (args.data_out / "heldout.txt").stat().st_size,
        "calib_docs": len(calib_docs),
        "calib_bytes": (args.data_out / "train.txt").stat().st_size,
        "ppl": ppl,
        "unigram_ppl": unigram,
        "python": platform.python_version(),
        "psf_notice": notice,
        "platform": f"{platform.machine()} {platform.system()}",
        "command": command_line(args),
    }
    (args.out / "README.md").write_text(model_readme(facts))
    (args.data_out / "README.md").write_text(data_readme(facts))


def command_line(args: argparse.Namespace) -> str:
    budget = f" --minutes {args.minutes}" if args.minutes is not None else f" --steps {args.steps}"
    return (
        f"python scripts/train_default_model.py --out {args.out} --data-out {args.data_out}"
        f"{budget} --seed {args.seed} --batch-size {args.batch_size} --lr {args.lr} --vocab-size {args.vocab_size}"
    )


if __name__ == "__main__":
    main()
