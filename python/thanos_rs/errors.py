"""One exception hierarchy for the whole package.

Every error a user can cause derives from :class:`ThanosError`; errors about a
value the caller passed also derive from :class:`ValueError` so generic
``except ValueError`` handlers keep working.  The Rust extension raises these
same classes (it looks them up here), so a kernel error never surfaces as a
bare ``RuntimeError`` or a panic.
"""

from __future__ import annotations

__all__ = [
    "ThanosError",
    "InputError",
    "HessianError",
    "ModelError",
    "DataError",
]


class ThanosError(Exception):
    """Base class of every error raised by thanos_rs."""


class InputError(ThanosError, ValueError):
    """An argument is invalid: wrong shape, dtype, range, pattern or name."""


class HessianError(ThanosError, ValueError):
    """The Hessian is unusable: not positive definite even after damping retries."""


class ModelError(ThanosError):
    """A model cannot be loaded, understood or saved."""


class DataError(ThanosError, ValueError):
    """Calibration or evaluation data is missing, empty or too short."""
