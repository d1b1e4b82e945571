"""The original's ``precomputed_tif.main.main(argv)``: the converter's command line, in-process.

An alignment UI calls it with ``--source``, ``--dest``, ``--levels``, ``--format``, ``--n-cores``
and shows the progress by replacing ``tqdm.tqdm``; both keep working. Arguments and defaults are
those of ``precomputed-tif`` (see the README: ``--format`` defaults to tiff as the original's
README says, ``--levels`` to as many as the volume needs).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(args: Sequence[str] | None = None) -> None:
    """Convert as ``precomputed-tif args...`` does, in this process.

    Bad arguments raise `SystemExit` (argparse's usage message, status 2), as the original's
    did; any other failure raises its exception (a `precomputed_tif.PrecomputedTifError` for
    bad input), and Ctrl-C or a cancelled progress bar `KeyboardInterrupt`, leaving a volume
    that ``--resume`` finishes. Progress goes through ``tqdm.tqdm``, looked up at call time.
    """
    from .cli.convert import main as cli_main

    cli_main(list(sys.argv[1:] if args is None else args), in_process=True)
