"""benches/layer_bench.py: the work it counts from the masks, and a smoke run of the whole report."""

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benches" / "layer_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("layer_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_mask(c: int, b: int, seed: int) -> torch.Tensor:
    return torch.rand(c, b, generator=torch.Generator().manual_seed(seed)) < 0.5


def test_thanos_work_is_each_rows_solve_and_the_block_columns(bench):
    c, b, block = 5, 23, 8  # a ragged last block
    mask = random_mask(c, b, 0)
    solves = columns = 0
    for i in range(0, b, block):
        width = min(block, b - i)
        columns += c * width * width
        for k in range(c):
            s = int(mask[k, i:i + width].sum())
            solves += s ** 3 / 6 + s ** 2
    work = bench.extra_work("thanos", "unstructured", mask, block)
    assert work["solves"] == pytest.approx(solves)
    assert work["block columns"] == columns


def test_sparsegpt_work_is_one_update_of_the_later_block_columns_per_pruned_entry(bench):
    c, b, block = 4, 19, 6
    mask = random_mask(c, b, 1)
    want = sum(min(i + block, b) - 1 - j
               for i in range(0, b, block) for j in range(i, min(i + block, b)) for k in range(c) if mask[k, j])
    assert bench.extra_work("sparsegpt", "2:4", mask, block) == {"in-block loop": want}


def test_structured_and_the_other_methods_count_nothing(bench):
    mask = random_mask(3, 8, 2)
    assert bench.extra_work("thanos", "structured", mask, 4) is None
    assert bench.extra_work("wanda", "unstructured", mask, 4) is None


def test_a_small_run_prints_the_table_and_the_work(bench, capsys):
    assert bench.main(["--shapes", "32x48", "--methods", "thanos,sparsegpt", "--patterns", "unstructured",
                       "--backends", "rust", "--published-max-b", "0"]) == 0
    out = capsys.readouterr().out
    assert "| 32x48 | thanos | unstructured 50% | rust |" in out
    assert "- 32x48 unstructured 50% (rust): thanos " in out
