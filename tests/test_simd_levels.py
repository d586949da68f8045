"""THANOS_SIMD caps the Rust kernels' instruction set; every level prunes alike.

Each level runs in its own process (the core reads the variable once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from thanos_rs import InputError, prune_layer

SCRIPT = r"""
import json, sys
import numpy as np
from thanos_rs import prune_layer
rng = np.random.default_rng(0)
x = rng.standard_normal((96, 400)) * np.exp(rng.uniform(-2, 2, 96))[:, None]
h = 2 * x @ x.T / 400
w = rng.standard_normal((70, 96)).astype(np.float32)
out = {}
for method, pattern in [("thanos", "unstructured"), ("thanos", "2:4"), ("sparsegpt", "unstructured"), ("wanda", "2:4")]:
    r = prune_layer(w, h.astype(np.float32), method=method, pattern=pattern, block_size=32, backend="rust")
    out[f"{method} {pattern}"] = [r.weight.tolist(), r.mask.tolist()]
json.dump(out, sys.stdout)
"""


def run_at(level: str) -> dict:
    env = {**os.environ, "THANOS_SIMD": level, "RAYON_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_every_level_gives_the_same_masks_and_close_weights():
    results = {level: run_at(level) for level in ("baseline", "avx2", "avx512")}
    ref = results["avx512"]
    for level, res in results.items():
        for case, (weight, mask) in res.items():
            assert mask == ref[case][1], f"{level}: {case} mask differs"
            np.testing.assert_allclose(weight, ref[case][0], rtol=1e-4, atol=1e-5, err_msg=f"{level}: {case}")


def test_an_unknown_level_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("THANOS_SIMD", "sse9")
    with pytest.raises(InputError, match="THANOS_SIMD='sse9'.*baseline, avx2, avx512"):
        prune_layer(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32), backend="rust")
