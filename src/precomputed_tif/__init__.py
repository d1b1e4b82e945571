"""precomputed-tif: TIFF z-stacks to Neuroglancer precomputed volumes, and back to numpy."""

from .convert import Budget, convert
from .errors import PlanError, PrecomputedTifError, SourceError, StoreError, StoreExistsError
from .pyramid import Pyramid, Scale, plan_pyramid
from .read import Volume, VolumeLevel, open_volume
from .sources import ArraySource, open_source
from .stack import Stack
from .stores import FORMATS, create_store, open_store
from .zarr_stack import ZarrStack

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "ArraySource",
    "Budget",
    "PlanError",
    "PrecomputedTifError",
    "Pyramid",
    "Scale",
    "SourceError",
    "Stack",
    "StoreError",
    "StoreExistsError",
    "Volume",
    "VolumeLevel",
    "ZarrStack",
    "__version__",
    "convert",
    "create_store",
    "open_source",
    "open_store",
    "open_volume",
    "plan_pyramid",
]
