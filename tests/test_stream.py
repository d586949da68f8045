"""``--offload disk``: weights streamed from the shards one block at a time, same result as in RAM."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import fixture_path, random_llama_dir, tiny_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from thanos_rs.errors import InputError, ModelError
from thanos_rs.model import load_model
from thanos_rs.pipeline import PruneConfig, prune_model
from thanos_rs.stream import open_streamed

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(nsamples=8, seqlen=64):
    return torch.randint(3, 512, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))


def _config(save, **overrides):
    return PruneConfig(**{"progress": False, "batch_size": 4, "save": str(save), **overrides})


def _state(directory):
    return AutoModelForCausalLM.from_pretrained(directory).state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


@pytest.mark.parametrize("method,pattern", [("thanos", "unstructured"), ("sparsegpt", "2:4"), ("wanda", "structured")])
def test_disk_offload_equals_the_in_memory_run(stories_model_dir, tmp_path, method, pattern):
    model, tokenizer = load_model(str(stories_model_dir))
    in_ram = prune_model(model, tokenizer, _config(tmp_path / "ram", method=method, pattern=pattern), _ids())
    streamed, tokenizer = open_streamed(str(stories_model_dir))
    on_disk = prune_model(streamed, tokenizer, _config(tmp_path / "disk", method=method, pattern=pattern,
                                                       offload="disk"), _ids())

    _assert_same_weights(_state(tmp_path / "ram"), _state(tmp_path / "disk"))
    assert [(r.name, r.zeros, r.loss) for r in on_disk.layers] == [(r.name, r.zeros, r.loss) for r in in_ram.layers]
    # One shard per block plus one for the rest, and an index that names every tensor with the right total.
    out = tmp_path / "disk"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) == 5 + 1
    total = 0
    for shard in shards:
        with safe_open(shard, "pt") as f:
            for key in f.keys():
                assert index["weight_map"][key] == shard.name
                tensor = f.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "ram"]  # no work directory left


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import torch
    from thanos_rs.pipeline import PruneConfig, prune_model
    from thanos_rs.stream import open_streamed

    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

    def run(model_dir, out):
        ids = torch.randint(3, 512, (8, 128), generator=torch.Generator().manual_seed(0))
        streamed, tokenizer = open_streamed(model_dir)
        config = PruneConfig(pattern="2:4", offload="disk", save=out, progress=False, batch_size=4)
        prune_model(streamed, tokenizer, config, calibration=ids)

    torch.set_num_threads(1)
    warm, model_dir, out = sys.argv[1:]
    run(warm, out + "-warm")  # libraries allocate their buffers once: not part of what the run needs
    base, peak, done = rss(), [0], []
    def sample():
        while not done:
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)
    sampler = threading.Thread(target=sample)
    sampler.start()
    run(model_dir, out)
    done.append(1)
    sampler.join()
    print(json.dumps({"growth": peak[0] - base}))
""")


def test_disk_offload_prunes_a_model_three_times_larger_than_its_memory_growth(tmp_path):
    warm = random_llama_dir(tmp_path / "warm", layers=1)
    model_dir = random_llama_dir(tmp_path / "model", layers=32)
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    out = tmp_path / "disk"
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(warm), str(model_dir), str(out)],
                         capture_output=True, text=True, timeout=600,
                         env={"RAYON_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    growth = json.loads(run.stdout.strip().splitlines()[-1])["growth"]
    assert weights >= 3 * growth, f"weights {weights / 2**20:.0f} MiB, peak RSS growth {growth / 2**20:.0f} MiB"

    model, tokenizer = load_model(str(model_dir))
    config = _config(tmp_path / "ram", pattern="2:4")
    prune_model(model, tokenizer, config, calibration=torch.randint(3, 512, (8, 128),
                                                                     generator=torch.Generator().manual_seed(0)))
    _assert_same_weights(_state(tmp_path / "ram"), _state(out))


def test_disk_offload_refuses_what_it_cannot_do(stories_model_dir, tmp_path):
    streamed, tokenizer = open_streamed(str(stories_model_dir))
    with pytest.raises(InputError, match="needs? --save|give it --save"):
        prune_model(streamed, tokenizer, PruneConfig(offload="disk", progress=False), _ids())
    with pytest.raises(InputError, match="cannot evaluate"):
        prune_model(streamed, tokenizer, _config(tmp_path / "o", offload="disk", eval=["wikitext2"]), _ids())
    with pytest.raises(InputError, match="drop --format compact"):
        prune_model(streamed, tokenizer, _config(tmp_path / "o", offload="disk", save_format="compact"), _ids())
    with pytest.raises(InputError, match="StreamedModel"):
        prune_model(streamed, tokenizer, _config(tmp_path / "o"), _ids())
    model, _ = load_model(str(stories_model_dir))
    with pytest.raises(InputError, match="StreamedModel"):
        prune_model(model, tokenizer, _config(tmp_path / "o", offload="disk"), _ids())
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_without_safetensors_is_a_model_error(stories_model_dir, tmp_path):
    model, _ = load_model(str(stories_model_dir))
    model.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").rename(tmp_path / "bin" / "weights.other")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "bin" / name).write_bytes((stories_model_dir / name).read_bytes())
    with pytest.raises(ModelError, match="neither model.safetensors nor model.safetensors.index.json"):
        open_streamed(str(tmp_path / "bin"))


def test_a_checkpoint_missing_a_block_tensor_is_a_model_error(stories_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in stories_model_dir.glob("*.*"):
        (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    streamed, tokenizer = open_streamed(str(broken))
    with pytest.raises(ModelError, match="model.layers.2.mlp.up_proj.weight"):
        prune_model(streamed, tokenizer, _config(tmp_path / "out", offload="disk"), _ids())
    assert not (tmp_path / "out").exists()


def _checkpoint_from(model, directory, rename=lambda key: key, extra=None):
    """``model`` saved as safetensors, its keys renamed and ``extra`` tensors added, with a tokenizer."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(directory)
    tensors = {rename(k): v for k, v in load_file(directory / "model.safetensors").items()}
    save_file({**tensors, **(extra or {})}, directory / "model.safetensors", metadata={"format": "pt"})
    tokenizer_dir = fixture_path("stories260k")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((tokenizer_dir / name).read_bytes())
    return directory


@pytest.mark.parametrize("case", ["gpt2 saved without its transformer. prefix", "tied lm_head stored anyway"])
def test_disk_offload_reads_checkpoints_as_from_pretrained_does(tmp_path, case):
    if case.startswith("gpt2"):
        model = tiny_model("gpt2")
        source = _checkpoint_from(model, tmp_path / "src", rename=lambda k: k.removeprefix("transformer."))
    else:
        model = tiny_model("llama", tie_word_embeddings=True)
        embeddings = model.get_input_embeddings().weight.detach().clone()
        source = _checkpoint_from(model, tmp_path / "src", extra={"lm_head.weight": embeddings})
    in_ram, tokenizer = load_model(str(source))
    prune_model(in_ram, tokenizer, _config(tmp_path / "ram"), _ids(seqlen=32))
    streamed, tokenizer = open_streamed(str(source))
    prune_model(streamed, tokenizer, _config(tmp_path / "disk", offload="disk"), _ids(seqlen=32))
    _assert_same_weights(_state(tmp_path / "ram"), _state(tmp_path / "disk"))
