"""The Neuroglancer client bundled in the ``neuroglancer`` wheel, and links that open it.

The wheel's client is built for its Python server: it only starts under ``/v/<token>/`` and reads
its state from the URL fragment (``#!`` + JSON). We serve its files and build that fragment, so a
user needs no internet to look at the data.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

from ..errors import PrecomputedTifError

VIEWER_PATH = "/v/ng/"


def client_folder() -> str:
    """Where the installed neuroglancer wheel keeps its built client."""
    try:
        import neuroglancer
    except ImportError as exc:
        raise PrecomputedTifError(
            "--viewer needs the neuroglancer package: pip install 'precomputed-tif[viewer]'"
        ) from exc
    folder = os.path.join(os.path.dirname(neuroglancer.__file__), "static", "client")
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise PrecomputedTifError(f"the neuroglancer package has no built client in {folder}")
    return folder


def viewer_state(base_url: str, layers: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """A viewer state showing each (name, url path, info) layer, centred on the first one."""
    first = layers[0][2]
    scale = first.get("scales", [{}])[0]
    resolution = scale.get("resolution", [1, 1, 1])
    size = scale.get("size", [1, 1, 1])
    offset = scale.get("voxel_offset", [0, 0, 0])
    state: dict[str, Any] = {
        "dimensions": {axis: [float(r) * 1e-9, "m"] for axis, r in zip("xyz", resolution)},
        "position": [o + s / 2 for o, s in zip(offset, size)],
        "crossSectionScale": max(1.0, max(size[:2]) / 800),
        "layers": [],
        "layout": "4panel",
    }
    for name, path, info in layers:
        kind = "segmentation" if info.get("type") == "segmentation" else "image"
        if info.get("@type") == "neuroglancer_annotations_v1":
            kind = "annotation"
        url = "precomputed://" + base_url.rstrip("/") + path
        state["layers"].append({"type": kind, "source": url, "name": name})
    return state


def viewer_link(base_url: str, state: dict[str, Any]) -> str:
    fragment = urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="")
    return base_url.rstrip("/") + VIEWER_PATH + "#!" + fragment
