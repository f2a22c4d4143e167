"""One error hierarchy for everything `lsm` reports to a user.

Every message names the file, key or value at fault, on one line, so that the
CLI can print it as is and exit non-zero.
"""

from __future__ import annotations


class LsmError(Exception):
    """Base class of every error `lsm` raises on bad input."""


class SpecError(LsmError):
    """A region or pipeline spec is invalid (unknown key, missing file, bad CRS, ...)."""


class DataError(LsmError):
    """A data file cannot be read or holds values that make no sense."""


class ChecksumError(DataError):
    """A file does not match the sha256 its spec declares."""


class GridMismatchError(LsmError):
    """Rasters cannot be put on one grid (no overlap with the AOI, ...)."""


class FactorMismatchError(LsmError):
    """Factors of a model and of a region do not line up."""


class ArtifactError(LsmError):
    """A model artifact is missing, truncated, tampered with or from another version."""


class SamplingError(LsmError):
    """Samples cannot be drawn as asked (too few points, no valid pixels, ...)."""


class RunBusyError(LsmError):
    """A run folder is being written by another lsm process."""


class SchedulerError(LsmError):
    """The dask scheduler given by ``--scheduler`` / ``LSM_SCHEDULER`` cannot be used."""


class ArgumentError(LsmError, ValueError):
    """An argument of a Python API call is invalid; the message names the argument."""


class InputWarning(UserWarning):
    """Rows given to :meth:`lsm.Run.predict` hold values the model cannot score as given
    (missing, an unknown category, outside the training range)."""
