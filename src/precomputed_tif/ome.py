"""OME-Zarr (NGFF) group metadata: what we write for a pyramid, and what we read of anyone's.

We write 0.4 (zarr v2 ``.zattrs``) or 0.5 (zarr v3 ``zarr.json`` under ``ome``) for 5-D arrays
``(t, c, z, y, x)``, as the original NGFF layout did; ``omero`` names each channel of ``c`` and
gives it a colour and a display window. Reading accepts 0.1-0.5 (and 0.2 without axes, as the
original wrote): the space axes become the volume's z, y, x, a ``c`` axis its channels, and every
other axis is read at index 0. No I/O happens here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StoreError
from .pyramid import Pyramid

AXES = ("t", "c", "z", "y", "x")
SPACE = ("z", "y", "x")
UNIT = "micrometer"
# nanometres per unit, for the space units OME allows (the common ones)
NM_PER_UNIT = {
    "angstrom": 0.1,
    "nanometer": 1.0,
    "micrometer": 1e3,
    "millimeter": 1e6,
    "centimeter": 1e7,
    "decimeter": 1e8,
    "meter": 1e9,
    "picometer": 1e-3,
    "femtometer": 1e-6,
    "inch": 2.54e7,
    "foot": 3.048e8,
}


# --- writing -------------------------------------------------------------------------------
def _axes_json() -> list[dict[str, Any]]:
    return [
        {"name": "t", "type": "time"},
        {"name": "c", "type": "channel"},
        *({"name": a, "type": "space", "unit": UNIT} for a in SPACE),
    ]


def _number(value: float) -> float:
    return float(round(value, 9))


# methods whose coarse voxel summarises its whole block, so its centre is the block's centre
_CENTRED = ("mean", "max", "min")


def _datasets_json(pyramid: Pyramid) -> list[dict[str, Any]]:
    """Per level: the voxel size (µm) per axis, and the shift of the voxel centres."""
    first = [r / 1000 for r in reversed(pyramid.scale(1).resolution_nm)]  # z, y, x
    out = []
    for level, scale in enumerate(pyramid.scales):
        size = [r / 1000 for r in reversed(scale.resolution_nm)]
        # an axis kept (factor 1 so far) has size == first there: no shift
        shift = [(s - f) / 2 for s, f in zip(size, first)]
        if pyramid.downsample_method not in _CENTRED:
            # mode and stride pick one voxel of the block: no single centre moves
            shift = [0.0, 0.0, 0.0]
        out.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, 1.0, *map(_number, size)]},
                    {"type": "translation", "translation": [0.0, 0.0, *map(_number, shift)]},
                ],
            }
        )
    return out


def multiscales_json(pyramid: Pyramid, name: str, version: str) -> dict[str, Any]:
    method = pyramid.downsample_method
    factors = sorted({pyramid.factor(level) for level in range(2, pyramid.n_levels + 1)})
    blocks = ", ".join("x".join(map(str, f)) for f in factors) or "2x2x2"
    entry: dict[str, Any] = {
        "name": name,
        "axes": _axes_json(),
        "datasets": _datasets_json(pyramid),
        "type": method,
        "metadata": {
            "description": f"{blocks} (x, y, z) block {method} of the previous level "
            "(precomputed-tif)",
            "method": f"precomputed_tif.downsample.downsample_{method}",
        },
    }
    if version == "0.4":
        entry = {"version": "0.4", **entry}
    return entry


def omero_json(
    pyramid: Pyramid,
    name: str,
    windows: list[tuple[float, float]],
    version: str,
    labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One channel per window (the data's dim and bright ends): grey when alone, else each in
    its own colour (see `channels.channel_color`), labelled by `labels`."""
    from .channels import channel_color

    dtype = pyramid.dtype
    channels = []
    for c, window in enumerate(windows):
        if dtype.kind in "ui":
            low, high = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        else:
            low, high = min(window[0], 0.0), max(window[1], 1.0)
        channels.append(
            {
                "label": labels[c] if c < len(labels) else name,
                "color": "FFFFFF" if len(windows) == 1 else channel_color(c),
                "active": True,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
                "window": {
                    "min": _plain(low),
                    "max": _plain(high),
                    "start": _plain(window[0]),
                    "end": _plain(window[1]),
                },
            }
        )
    model = "greyscale" if len(windows) == 1 else "color"
    omero: dict[str, Any] = {
        "name": name,
        "channels": channels,
        "rdefs": {"defaultT": 0, "defaultZ": pyramid.scale(1).size[2] // 2, "model": model},
    }
    if version == "0.4":
        omero = {"version": "0.4", **omero}
    return omero


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def group_attributes(
    pyramid: Pyramid,
    name: str,
    version: str,
    windows: list[tuple[float, float]] | None,
    labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The attributes of the image group: ``.zattrs`` (0.4) or ``zarr.json``'s (0.5); one
    window (and label) per channel."""
    body: dict[str, Any] = {"multiscales": [multiscales_json(pyramid, name, version)]}
    if pyramid.is_segmentation:
        body["image-label"] = {"colors": []} if version == "0.5" else {"version": "0.4"}
    elif windows is not None:
        body["omero"] = omero_json(pyramid, name, windows, version, labels)
    if version == "0.5":
        return {"ome": {"version": "0.5", **body}}
    return body


# --- reading -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OmeImage:
    """What a reader needs of an OME-Zarr image group.

    `axes` names every array axis; `space` holds the positions of z, y, x in them (None for a
    missing z); `voxel_nm` is the level-0 voxel size (x, y, z) in nanometres when the metadata
    gives one.
    """

    version: str
    paths: tuple[str, ...]
    axes: tuple[str, ...]
    space: tuple[int | None, int, int]
    voxel_nm: tuple[tuple[float, float, float] | None, ...]
    is_label: bool


def ome_attributes(attributes: dict[str, Any]) -> dict[str, Any] | None:
    """The OME part of a group's attributes (0.5 nests it under ``ome``), or None."""
    ome = attributes.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return {**ome, "version": str(ome.get("version", "0.5"))}
    if isinstance(attributes.get("multiscales"), list):
        return attributes
    return None


def parse_image(attributes: dict[str, Any], where: str) -> OmeImage:
    """The image an OME group's attributes describe; StoreError saying what is wrong."""
    ome = ome_attributes(attributes)
    if ome is None:
        raise StoreError(f"{where} is a zarr group without OME multiscales")
    try:
        entry = ome["multiscales"][0]
        version = str(ome.get("version") or entry.get("version") or "0.1")
        axes = _axis_names(entry.get("axes"))
        paths = tuple(str(d["path"]) for d in entry["datasets"])
        transforms = [list(d.get("coordinateTransformations") or []) for d in entry["datasets"]]
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise StoreError(f"{where}: malformed OME multiscales: {exc!r}") from exc
    if not paths:
        raise StoreError(f"{where}: OME multiscales lists no datasets")
    units = _axis_units(entry.get("axes"))
    voxels = tuple(_voxel_nm(t, axes, units) for t in transforms)
    space = _space_positions(axes, where)
    return OmeImage(version, paths, axes, space, voxels, is_label="image-label" in ome)


def _axis_names(axes: Any) -> tuple[str, ...]:
    if axes is None:
        return AXES  # 0.1/0.2: always 5-D t, c, z, y, x
    return tuple(str(a["name"]) if isinstance(a, dict) else str(a) for a in axes)


def _axis_units(axes: Any) -> dict[str, str]:
    if not isinstance(axes, list):
        return {}
    return {str(a["name"]): str(a["unit"]) for a in axes if isinstance(a, dict) and a.get("unit")}


def _space_positions(axes: tuple[str, ...], where: str) -> tuple[int | None, int, int]:
    try:
        y, x = axes.index("y"), axes.index("x")
    except ValueError:
        raise StoreError(f"{where}: OME axes {list(axes)} have no y and x") from None
    z = axes.index("z") if "z" in axes else None
    return (z, y, x)


def _voxel_nm(
    transforms: list[dict[str, Any]], axes: tuple[str, ...], units: dict[str, str]
) -> tuple[float, float, float] | None:
    scale = next((t.get("scale") for t in transforms if t.get("type") == "scale"), None)
    if not isinstance(scale, list) or len(scale) != len(axes):
        return None
    out = []
    for axis in ("x", "y", "z"):
        if axis not in axes:
            out.append(1000.0)
            continue
        factor = NM_PER_UNIT.get(units.get(axis, UNIT), 1000.0)
        out.append(float(scale[axes.index(axis)]) * factor)
    return (out[0], out[1], out[2])
