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


def thanos_work(mask: torch.Tensor, block: int) -> dict:
    """Thanos's extra work block by block, row by row, as the Rust kernel does it."""
    c, b = mask.shape
    work = {"R": 0, "solves": 0, "block columns": 0}
    for i in range(0, b, block):
        width = min(block, b - i)
        work["R"] += width * width * (b - i)  # R = U_blk^T U[i1:i2, i1:]
        work["block columns"] += c * width * width  # W[:, i1:i2] in the update GEMM
        for k in range(c):
            s = int(mask[k, i:i + width].sum())
            work["solves"] += s ** 3 / 6 + s ** 2
    return work


def test_thanos_work_is_r_each_rows_solve_and_the_block_columns(bench):
    mask = random_mask(5, 23, 0)  # a ragged last block
    assert bench.extra_work("thanos", "unstructured", mask, 8) == pytest.approx(thanos_work(mask, 8))


def test_nm_blocks_are_rounded_down_to_a_multiple_of_m(bench):
    mask = random_mask(4, 30, 3)
    assert bench.extra_work("thanos", "3:5", mask, 8) == pytest.approx(thanos_work(mask, 5))
    assert bench.extra_work("thanos", "2:4", mask, 128) == pytest.approx(thanos_work(mask, 30))


def test_sparsegpt_work_is_one_update_of_the_later_block_columns_per_pruned_entry(bench):
    c, b, block = 4, 19, 6
    mask = random_mask(c, b, 1)
    want = sum(min(i + block, b) - 1 - j
               for i in range(0, b, block) for j in range(i, min(i + block, b)) for k in range(c) if mask[k, j])
    assert bench.extra_work("sparsegpt", "unstructured", mask, block) == {"in-block loop": want}


def test_structured_and_the_other_methods_count_nothing(bench):
    mask = random_mask(3, 8, 2)
    assert bench.extra_work("thanos", "structured", mask, 4) is None
    assert bench.extra_work("wanda", "unstructured", mask, 4) is None


def test_a_small_run_prints_the_table_and_the_work(bench, capsys):
    assert bench.main(["--shapes", "32x48", "--methods", "thanos,sparsegpt", "--patterns", "unstructured",
                       "--backends", "rust,torch", "--published-max-b", "0"]) == 0
    out = capsys.readouterr().out
    assert "| 32x48 | thanos | unstructured 50% | rust |" in out
    assert "- 32x48 unstructured 50% (rust): thanos " in out
    assert "(torch)" not in out  # the counts model the Rust kernels only
