"""Type stubs of the Rust extension (rust/thanos-py)."""

import numpy as np
import numpy.typing as npt

__version__: str

def prune_layer(
    weight: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    hessian: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    method: str,
    kind: str,
    n: int,
    m: int,
    sparsity: float,
    alpha: float,
    block_size: int,
    damp: float,
) -> tuple[npt.NDArray[np.float32] | npt.NDArray[np.float64], npt.NDArray[np.bool_], float]:
    """Prune one layer on the CPU; C-contiguous inputs of one float dtype.

    ``kind`` is "unstructured", "nm" (with n, m) or "structured".
    Returns (weight, mask, damp used). Raises thanos_rs.errors exceptions.
    """

def num_threads() -> int:
    """Threads the kernels use (set RAYON_NUM_THREADS before the first call)."""
