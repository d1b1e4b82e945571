"""Chunk bytes <-> arrays for Neuroglancer's encodings: raw, jpeg, png, compressed_segmentation.

Arrays are always (z, y, x). ``raw`` is the little-endian C-order bytes of that array, which is
Neuroglancer's x-fastest layout. ``jpeg`` and ``png`` store the chunk as one 2D image, ``x`` wide
and ``y * z`` tall (the tiling Neuroglancer decodes). ``compressed_segmentation`` is the
block-wise label encoding, through the seung-lab ``compressed_segmentation`` package.
"""

from __future__ import annotations

import numpy as np

from .errors import PlanError, StoreError

ENCODINGS = ("raw", "jpeg", "png", "compressed_segmentation")
ALLOWED_TYPES = {
    "raw": None,
    "jpeg": ("uint8",),
    "png": ("uint8", "uint16"),
    "compressed_segmentation": ("uint32", "uint64"),
}
DEFAULT_SEGMENTATION_BLOCK = (8, 8, 8)
JPEG_QUALITY = 90


def check_encoding(encoding: str, data_type: str) -> None:
    """Raise PlanError when `encoding` cannot hold `data_type`."""
    if encoding not in ENCODINGS:
        raise PlanError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    allowed = ALLOWED_TYPES[encoding]
    if allowed is not None and data_type not in allowed:
        raise PlanError(
            f"encoding {encoding} holds {' or '.join(allowed)}, not {data_type}; "
            "choose --encoding raw"
        )


def encode_chunk(
    data: np.ndarray,
    encoding: str,
    *,
    block_size: tuple[int, int, int] = DEFAULT_SEGMENTATION_BLOCK,
) -> bytes:
    """The stored bytes of a (z, y, x) chunk."""
    if encoding == "raw":
        little = data.dtype.newbyteorder("<")
        # tobytes gathers a strided view in one copy; ascontiguousarray first would make two
        return data.tobytes() if data.dtype == little else data.astype(little).tobytes()
    nz, ny, nx = data.shape
    if encoding == "jpeg":
        import imagecodecs

        return bytes(imagecodecs.jpeg8_encode(data.reshape(nz * ny, nx), level=JPEG_QUALITY))
    if encoding == "png":
        import imagecodecs

        return bytes(imagecodecs.png_encode(np.ascontiguousarray(data.reshape(nz * ny, nx))))
    if encoding == "compressed_segmentation":
        import compressed_segmentation

        # its 'F' order takes an (x, y, z) Fortran array: our (z, y, x) C array transposed
        return bytes(
            compressed_segmentation.compress(
                np.ascontiguousarray(data).T, block_size=block_size, order="F"
            )
        )
    raise PlanError(f"unknown encoding {encoding!r}")


def decode_chunk(
    blob: bytes,
    encoding: str,
    shape_zyx: tuple[int, int, int],
    dtype: np.dtype,
    *,
    block_size: tuple[int, int, int] = DEFAULT_SEGMENTATION_BLOCK,
) -> np.ndarray:
    """The (z, y, x) array stored in `blob`; StoreError when it does not decode to that shape."""
    nz, ny, nx = shape_zyx
    try:
        if encoding == "raw":
            return np.frombuffer(blob, dtype.newbyteorder("<")).reshape(shape_zyx).astype(dtype)
        if encoding in ("jpeg", "png"):
            import imagecodecs

            image = imagecodecs.imread(blob)
            return np.asarray(image, dtype).reshape(nz, ny, nx)
        if encoding == "compressed_segmentation":
            import compressed_segmentation

            xyz = compressed_segmentation.decompress(
                blob, (nx, ny, nz), dtype, block_size=block_size, order="F"
            )
            return np.ascontiguousarray(np.asarray(xyz).reshape(nx, ny, nz).T)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise StoreError(f"a {encoding} chunk does not decode to {shape_zyx}: {exc}") from exc
    except Exception as exc:  # codec libraries raise their own error types
        raise StoreError(f"a {encoding} chunk is damaged: {exc}") from exc
    raise StoreError(f"unknown encoding {encoding!r}")
