"""Running conversion stages under ``tqdm.tqdm`` loops, as the original's code did.

Applications written for the original replace ``tqdm.tqdm`` with a class of their own (a Qt
window's progress bar, whose cancel button raises KeyboardInterrupt inside the loop); they see
our progress only if each stage is a ``for`` loop over ``tqdm.tqdm(...)``, looked up at call time.
Used by `precomputed_tif.main.main` and the original's stack classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def drive_with_tqdm(stage_runs: Iterable[Any], *, show: bool) -> None:
    """Run conversion stages (`StageRun`), iterating a ``tqdm.tqdm`` over each one's tasks.

    As the original's loops did: an application that replaces ``tqdm.tqdm`` (a Qt window's
    progress bar, whose cancel button raises KeyboardInterrupt inside the loop) sees every
    task. ``tqdm.tqdm`` is looked up here, at call time, for that replacement to work.
    """
    import tqdm

    for stage_run in stage_runs:
        results: Any = stage_run.results
        if show:
            stage = stage_run.stage
            desc = f"level {stage.first}" + (f"-{stage.last}" if stage.last > stage.first else "")
            results = tqdm.tqdm(results, total=stage_run.n_todo, desc=desc)
        for _ in results:
            pass
