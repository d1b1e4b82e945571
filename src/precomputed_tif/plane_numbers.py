"""What the numbers in plane names say about the stack: planes missing from a numbered
sequence, and numbers that alphabetical order takes out of turn.

Both only warn: a stack may skip planes on purpose, and the planes are stacked as given either
way. But a plane lost in acquisition or in a copy shifts every later plane one z step, and the
volume looks right; the warning is the only place a user would learn of it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

log = logging.getLogger("precomputed_tif")

NUMBER = re.compile(r"(\d+)")  # a run of digits, kept by re.split


def plane_numbers(paths: Sequence[str]) -> list[int] | None:
    """The number that counts the planes: the one run of digits, at the same place in every
    name, that changes from name to name. None if there is no such run or more than one
    (``Z001_X0432`` tiles, time stamps), so that no guess is made."""
    fields = [NUMBER.findall(os.path.basename(p)) for p in paths]
    if not fields or any(len(f) != len(fields[0]) for f in fields):
        return None
    varying = [i for i in range(len(fields[0])) if len({f[i] for f in fields}) > 1]
    if len(varying) != 1:
        return None
    return [int(f[varying[0]]) for f in fields]


def warn_if_planes_missing(paths: Sequence[str]) -> None:
    """Warn when the plane numbers climb by one step (1, or the 20 of z positions in tenths of a
    micron) except at a few places where they jump by several: the planes in between are not
    there."""
    numbers = plane_numbers(paths)
    if numbers is None or len(numbers) < 3:
        return
    steps = [after - before for before, after in zip(numbers, numbers[1:])]
    step = min(steps)
    if step <= 0 or any(s % step for s in steps) or steps.count(step) * 2 < len(steps):
        return  # not a regular count: out of order, repeated, or spaced unevenly on purpose
    gaps = [i for i, s in enumerate(steps) if s > step]
    if not gaps:
        return
    missing = sum(steps[i] // step - 1 for i in gaps)
    first = gaps[0]
    more = f", and {len(gaps) - 1} more gap(s)" if len(gaps) > 1 else ""
    log.warning(
        "%d plane(s) missing from the numbering? It jumps from %d to %d (%s, %s)%s; the "
        "planes are stacked as they are, so each one after a gap lies that many z steps "
        "lower than where it was imaged",
        missing,
        numbers[first],
        numbers[first + 1],
        os.path.basename(paths[first]),
        os.path.basename(paths[first + 1]),
        more,
    )


def warn_if_unpadded_numbers(paths: Sequence[str]) -> None:
    """Warn when alphabetical order differs from numeric order (``img_10`` before ``img_2``)."""
    numbered = []
    for path in paths:
        numbers = NUMBER.findall(os.path.basename(path))
        if not numbers:
            return
        numbered.append(int(numbers[-1]))
    for before, after, path_a, path_b in zip(numbered, numbered[1:], paths, paths[1:]):
        if after < before:
            log.warning(
                "plane names look numbered without zero padding: %r sorts before %r in "
                "--order alphabetical; --order natural takes them by number",
                os.path.basename(path_a),
                os.path.basename(path_b),
            )
            return
