"""Chunk bytes <-> arrays for Neuroglancer's encodings: raw, jpeg, png, compressed_segmentation.

Arrays are (z, y, x), or (z, y, x, c) for volumes of several channels. ``raw`` is the
little-endian C-order bytes of the (c, z, y, x) array, which is Neuroglancer's x-fastest layout.
``jpeg`` and ``png`` store the chunk as one 2D image, ``x`` wide and ``y * z`` tall (the tiling
Neuroglancer decodes), channels as the pixels' samples. ``compressed_segmentation`` is the
block-wise label encoding, through the seung-lab ``compressed_segmentation`` package (an
extra, ``precomputed-tif[segmentation]``: its wheels require pytest and click at run time).
"""

from __future__ import annotations

from typing import Any

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
    if encoding == "compressed_segmentation":
        _segmentation_codec()
    allowed = ALLOWED_TYPES[encoding]
    if allowed is not None and data_type not in allowed:
        raise PlanError(
            f"encoding {encoding} holds {' or '.join(allowed)}, not {data_type}; "
            "choose --encoding raw"
        )


def _segmentation_codec() -> Any:
    """The compressed_segmentation module, or an error saying how to install it."""
    try:
        import compressed_segmentation
    except ImportError:
        raise PlanError(
            "the compressed_segmentation encoding needs the compressed-segmentation package: "
            "pip install 'precomputed-tif[segmentation]'"
        ) from None
    return compressed_segmentation


def encode_chunk(
    data: np.ndarray,
    encoding: str,
    *,
    block_size: tuple[int, int, int] = DEFAULT_SEGMENTATION_BLOCK,
) -> bytes:
    """The stored bytes of a (z, y, x) or (z, y, x, c) chunk."""
    if encoding == "raw":
        if data.ndim == 4:
            data = np.moveaxis(data, 3, 0)  # channels are the slowest axis on disk
        little = data.dtype.newbyteorder("<")
        # tobytes gathers a strided view in one copy; ascontiguousarray first would make two
        return data.tobytes() if data.dtype == little else data.astype(little).tobytes()
    nz, ny, nx = data.shape[:3]
    image = data.reshape(nz * ny, nx, *data.shape[3:])
    if encoding == "jpeg":
        import imagecodecs

        return bytes(imagecodecs.jpeg8_encode(image, level=JPEG_QUALITY))
    if encoding == "png":
        import imagecodecs

        return bytes(imagecodecs.png_encode(np.ascontiguousarray(image)))
    if encoding == "compressed_segmentation":
        # its 'F' order takes an (x, y, z) Fortran array: our (z, y, x) C array transposed
        return bytes(
            _segmentation_codec().compress(
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
    channels: int = 1,
) -> np.ndarray:
    """The (z, y, x) array stored in `blob`, (z, y, x, c) with several `channels`.

    Raises StoreError when it does not decode to that shape.
    """
    nz, ny, nx = shape_zyx
    samples = (channels,) if channels > 1 else ()
    codec = _segmentation_codec() if encoding == "compressed_segmentation" else None
    try:
        if encoding == "raw":
            data = np.frombuffer(blob, dtype.newbyteorder("<"))
            if channels > 1:
                return np.moveaxis(data.reshape(channels, *shape_zyx), 0, 3).astype(dtype)
            return data.reshape(shape_zyx).astype(dtype)
        if encoding in ("jpeg", "png"):
            import imagecodecs

            image = imagecodecs.imread(blob)
            return np.asarray(image, dtype).reshape(nz, ny, nx, *samples)
        if codec is not None:
            if channels > 1:  # the spec allows one channel for segmentations
                raise StoreError(
                    f"compressed_segmentation chunks of {channels} channels are not supported"
                )
            xyz = codec.decompress(blob, (nx, ny, nz), dtype, block_size=block_size, order="F")
            return np.ascontiguousarray(np.asarray(xyz).reshape(nx, ny, nz).T)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise StoreError(f"a {encoding} chunk does not decode to {shape_zyx}: {exc}") from exc
    except Exception as exc:  # codec libraries raise their own error types
        raise StoreError(f"a {encoding} chunk is damaged: {exc}") from exc
    raise StoreError(f"unknown encoding {encoding!r}")


def blosc_frame_is_whole(frame: bytes) -> bool:
    """Whether a Blosc frame holds as many bytes as its header says (Blosc itself reads past the
    end of a truncated frame and returns whatever it finds there)."""
    if len(frame) < 16:
        return False
    cbytes = int.from_bytes(frame[12:16], "little")  # header: 4 flag bytes, nbytes, blocksize
    return cbytes == len(frame)
