"""lm-eval zero-shot scoring of the pruned in-memory model, offline, with a task built here."""

from __future__ import annotations

import json

import pytest
from conftest import SEPARATOR, fixture_path

pytest.importorskip("lm_eval")

from thanos_rs.errors import DataError  # noqa: E402
from thanos_rs.model import load_model  # noqa: E402
from thanos_rs.pipeline import PruneConfig, prune_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "tinystories_next_sentence"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A 2-choice task: which sentence continues the story, its own next one or another story's?"""
    text = fixture_path("text", "tinystories_valid_500.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split(SEPARATOR) if s.strip()][:40]
    sentences = [[x.strip() + "." for x in s.replace("\n", " ").split(".") if x.strip()] for s in stories]
    sentences = [s for s in sentences if len(s) >= 3][:24]
    root = tmp_path_factory.mktemp("lm_eval_task")
    rows = []
    for i, story in enumerate(sentences):
        other = sentences[(i + 7) % len(sentences)][2]
        rows.append({"context": " ".join(story[:2]), "choices": [" " + story[2], " " + other], "label": 0})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return root


def test_zero_shot_scores_before_and_after(task_dir, small_text):
    model, tokenizer = load_model(str(fixture_path("stories260k")))
    config = PruneConfig(method="wanda", calib=str(small_text), nsamples=8, seqlen=128, progress=False,
                         eval=[TASK], lm_eval_include=str(task_dir), lm_eval_limit=16)
    report = prune_model(model, tokenizer, config)
    before, after = report.lm_eval_before[TASK], report.lm_eval_after[TASK]
    assert 0.0 <= after["acc,none"] <= 1.0
    assert before["acc,none"] >= 0.6  # the dense model knows its own stories' continuations
    assert report.perplexity_before == {}


def test_unknown_task_is_a_data_error(small_text):
    model, tokenizer = load_model(str(fixture_path("stories260k")))
    config = PruneConfig(calib=str(small_text), nsamples=4, seqlen=64, progress=False, eval=["no_such_task_xyz"])
    with pytest.raises(DataError, match="no_such_task_xyz"):
        prune_model(model, tokenizer, config)
