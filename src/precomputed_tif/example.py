"""The small example stack that ships with the package, so a first run needs no data.

31 planes of 57 x 61 uint16 "synthetic nuclei" from stardist (BSD 3-Clause; the licence is
beside the file), as one multi-page TIFF: ``precomputed-tif --example --dest DEST``.
"""

from __future__ import annotations

import os

EXAMPLE_NAME = "stardist_img3d.tif"


def example_planes() -> str:
    """The path of the bundled example stack (a multi-page TIFF)."""
    return os.path.join(os.path.dirname(__file__), "data", EXAMPLE_NAME)
