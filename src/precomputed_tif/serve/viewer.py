"""The Neuroglancer client bundled in the ``neuroglancer`` wheel, and links that open it.

The wheel's client is built for its Python server: it only starts under ``/v/<token>/``, reads
its state from the URL fragment (``#!`` + JSON), and listens at ``/events/<token>`` for state
that Python pushes. We serve its files, build that fragment, and give its page a quiet stand-in
for that event stream (no Python drives this viewer), so the status bar stays clean and the
server is not asked every two seconds. A user needs no internet to look at the data.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

from ..errors import PrecomputedTifError

VIEWER_PATH = "/v/ng/"

# Runs before the client's scripts: an EventSource for the Python server's /events/<token> that
# opens and then stays silent, as the real stream does while Python changes nothing. Every other
# EventSource is the browser's own. (The client shows "Disconnected from Python server" and
# retries every 2 s when that stream fails, and a streaming answer would hold a server thread.)
QUIET_EVENTS_SCRIPT = r"""<script>(function () {
  var Real = window.EventSource;
  function Quiet(url) {
    var self = this;
    self.url = String(url);
    self.readyState = 0;
    self.withCredentials = false;
    setTimeout(function () {
      if (self.readyState !== 0) return;
      self.readyState = 1;
      if (self.onopen) self.onopen(new Event("open"));
    }, 0);
  }
  Quiet.prototype.close = function () { this.readyState = 2; };
  Quiet.prototype.addEventListener = function () {};
  Quiet.prototype.removeEventListener = function () {};
  function EventSource(url, init) {
    if (/\/events\/[^/]+$/.test(new URL(url, location.href).pathname)) return new Quiet(url);
    return new Real(url, init);
  }
  EventSource.CONNECTING = 0; EventSource.OPEN = 1; EventSource.CLOSED = 2;
  window.EventSource = EventSource;
})();</script>"""


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


def index_page(folder: str) -> bytes:
    """The client's ``index.html`` with the quiet event stream installed before its scripts."""
    with open(os.path.join(folder, "index.html"), "rb") as f:
        page = f.read().decode("utf-8")
    head = page.find("<head>")
    if head < 0:
        return (QUIET_EVENTS_SCRIPT + page).encode("utf-8")
    at = head + len("<head>")
    return (page[:at] + QUIET_EVENTS_SCRIPT + page[at:]).encode("utf-8")


# name, url path (or full source URL), info, display range, channel colour (RRGGBB) or None
Layer = tuple[str, str, dict[str, Any], "tuple[float, float] | None", "str | None"]

# one channel of several: its colour times its contrast, added to the others' (additive blending)
CHANNEL_SHADER = """#uicontrol vec3 color color(default="#{color}")
#uicontrol invlerp normalized
void main() {{
  emitRGB(color * normalized());
}}
"""
# a num_channels 3 volume (RGB sections) shown in its own colours
RGB_SHADER = """void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)),
               toNormalized(getDataValue(2))));
}
"""


def viewer_state(base_url: str, layers: list[Layer], layout: str = "4panel") -> dict[str, Any]:
    """A viewer state showing each `Layer`.

    The view is centred on the first layer and zoomed so its planes fill a panel; an image's
    display range (its dim and bright ends) sets the contrast, which Neuroglancer would
    otherwise stretch over the whole data type (a 12-bit camera image looks black in uint16).
    A layer with a colour is a channel: drawn in that colour, added to the others. An RGB
    volume (``num_channels`` 3) is drawn in its own colours.
    """
    first = layers[0][2]
    scale = first.get("scales", [{}])[0]
    resolution = scale.get("resolution", [1, 1, 1])
    size = scale.get("size", [1, 1, 1])
    offset = scale.get("voxel_offset", [0, 0, 0])
    state: dict[str, Any] = {
        # nm to m by division: 1000 / 1e9 is 1e-06, 1000 * 1e-9 is 1.0000000000000002e-06
        "dimensions": {axis: [float(r) / 1e9, "m"] for axis, r in zip("xyz", resolution)},
        "position": [o + s / 2 for o, s in zip(offset, size)],
        "crossSectionScale": max(size[:2]) / 500,
        "projectionScale": max(size) * 2,
        "layers": [],
        "layout": layout,
    }
    for name, path, info, display_range, color in layers:
        kind = "segmentation" if info.get("type") == "segmentation" else "image"
        if info.get("@type") == "neuroglancer_annotations_v1":
            kind = "annotation"
        # a path with its own scheme (zarr://...) is taken as it is
        url = path if "://" in path else "precomputed://" + base_url.rstrip("/") + path
        layer: dict[str, Any] = {"type": kind, "source": url, "name": name}
        if kind == "annotation":
            layer["annotationColor"] = "#ff00ff"  # stands out from grey images and yellow boxes
        if kind == "image" and display_range is not None:
            low, high = display_range
            layer["shaderControls"] = {"normalized": {"range": [low, high]}}
        if kind == "image" and color is not None:
            layer["shader"] = CHANNEL_SHADER.format(color=color.lower())
            layer["blend"] = "additive"
        elif kind == "image" and info.get("num_channels") == 3 and "://" not in path:
            layer["shader"] = RGB_SHADER
            layer["channelDimensions"] = {"c^": [1, ""]}  # the shader sees all three values
            layer.pop("shaderControls", None)
        state["layers"].append(layer)
    return state


def display_range(directory: str) -> tuple[float, float] | None:
    """The 0.5 and 99.5 percentiles of a volume's coarsest level, or None if unreadable."""
    from ..errors import PrecomputedTifError as _Error
    from ..read import open_volume
    from ..stores.base import display_window

    try:
        return display_window(open_volume(directory).store)
    except (_Error, OSError, ValueError):
        return None


def viewer_link(base_url: str, state: dict[str, Any]) -> str:
    fragment = urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="")
    return base_url.rstrip("/") + VIEWER_PATH + "#!" + fragment
