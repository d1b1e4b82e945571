"""The voxel size a TIFF records, from its ImageJ or OME-XML metadata.

ImageJ (and Fiji, and tifffile's ``imagej=True``) stores the pixel width and height as the
XResolution and YResolution tags, in pixels per ``unit`` named in the image description, and
the z step as ``spacing`` in the same unit; a single plane saved by ImageJ has no ``spacing``.
OME-TIFF stores ``PhysicalSizeX/Y/Z`` on its ``Pixels`` element, in micrometres unless a
``PhysicalSize?Unit`` says otherwise. The resolution tags of other TIFFs are left alone: most
writers fill them with a print resolution (72 dpi), not the microscope's.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any

# micrometres per unit, for the names ImageJ, Bio-Formats and OME write
_MICROMETRES = {
    "pm": 1e-6,
    "a": 1e-4,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "in": 25400.0,
    "inch": 25400.0,
}


@dataclass(frozen=True)
class RecordedVoxelSize:
    """A voxel size in micrometres as a file records it; `z_um` is None when it records none."""

    x_um: float
    y_um: float
    z_um: float | None
    where: str  # "ImageJ" or "OME-XML"

    def describe(self) -> str:
        sizes = [self.x_um, self.y_um] + ([self.z_um] if self.z_um is not None else [])
        text = " x ".join(f"{s:g}" for s in sizes) + " µm"
        return text if self.z_um is not None else f"{text} (x, y; no z step)"


def micrometres_per(unit: str) -> float | None:
    """How many micrometres one `unit` is (``micron``, ``\\u00B5m``, ``nm``, ...), or None."""
    name = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return _MICROMETRES.get(name)


def recorded_voxel_size(tif: Any) -> RecordedVoxelSize | None:
    """The voxel size an open `tifffile.TiffFile` records in its OME-XML or ImageJ metadata,
    or None if it records none (or nothing a microscope could have measured)."""
    found = _from_ome(tif) if tif.is_ome else None
    if found is None and tif.is_imagej:
        found = _from_imagej(tif)
    return found


def _plausible(*sizes: float | None) -> bool:
    return all(s is None or (math.isfinite(s) and s > 0) for s in sizes)


def _from_imagej(tif: Any) -> RecordedVoxelSize | None:
    metadata = tif.imagej_metadata or {}
    per_unit = micrometres_per(str(metadata.get("unit", "")))
    if per_unit is None:
        return None
    page = tif.pages.first
    try:
        x = _pixel_size(page.tags["XResolution"].value, per_unit)
        y = _pixel_size(page.tags["YResolution"].value, per_unit)
    except (KeyError, ZeroDivisionError, TypeError, ValueError):
        return None
    z = None
    if "spacing" in metadata:
        z_unit = micrometres_per(str(metadata.get("zunit", metadata["unit"]))) or per_unit
        try:
            z = float(metadata["spacing"]) * z_unit
        except (TypeError, ValueError):
            z = None
    if not _plausible(x, y, z):
        return None
    return RecordedVoxelSize(x, y, z, "ImageJ")


def _pixel_size(resolution: Any, per_unit: float) -> float:
    """Micrometres per pixel from a resolution tag (pixels per unit, a fraction). ImageJ writes
    the fraction as n / 1000000, so 1.5 mm pixels come back as 1.5000015 mm: six significant
    digits are what such a fraction holds."""
    numerator, denominator = resolution
    return float(f"{float(denominator) / float(numerator):.6g}") * per_unit


def _from_ome(tif: Any) -> RecordedVoxelSize | None:
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except (ElementTree.ParseError, TypeError, ValueError):
        return None
    pixels = next((e for e in root.iter() if re.sub(r"^\{.*\}", "", e.tag) == "Pixels"), None)
    if pixels is None:
        return None

    def size(axis: str) -> float | None:
        value = pixels.get(f"PhysicalSize{axis}")
        per_unit = micrometres_per(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or per_unit is None:
            return None
        try:
            return float(value) * per_unit
        except ValueError:
            return None

    x, y, z = size("X"), size("Y"), size("Z")
    if x is None or y is None or not _plausible(x, y, z):
        return None
    return RecordedVoxelSize(x, y, z, "OME-XML")
