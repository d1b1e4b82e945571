"""The error family of precomputed-tif.

Every error the library raises on purpose derives from `PrecomputedTifError` and also from the
builtin a caller would naturally catch, so `except ValueError` keeps working. The command-line
front end prints these as one line and exits with status 2; anything else is a bug.
"""

from __future__ import annotations


class PrecomputedTifError(Exception):
    """Base class of every error raised on purpose by precomputed-tif."""


class SourceError(PrecomputedTifError, ValueError):
    """The input planes cannot be used: missing, unreadable, or inconsistent."""


class StoreError(PrecomputedTifError, OSError):
    """A volume on disk is missing, malformed, or cannot be written."""


class StoreExistsError(StoreError, FileExistsError):
    """The destination already holds a different volume."""


class PlanError(PrecomputedTifError, ValueError):
    """The requested pyramid or task plan is impossible (bad levels, chunk size, memory)."""


class AlreadyConvertedError(StoreExistsError):
    """The destination already holds the finished conversion asked for: nothing to do."""


RESUME_HINT = "the volume is incomplete: run again with --resume to finish"


class IncompleteRunError(PrecomputedTifError, RuntimeError):
    """A conversion stopped part-way (a worker died, storage failed); resuming it finishes it."""
