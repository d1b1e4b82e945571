"""Checking a volume chunk by chunk: every chunk of every level is there and decodes to its box.

Each layout's own reader does the checking (blockfs entries inside their block file and matching
their checksums, shard indices that lead to their chunks, zarr and tiff chunk files that decode),
so a layout needs nothing of its own here. With the input planes at hand, a sample of chunks is
also computed again and compared. Nothing here writes; repairing is `repair`'s job.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from .encodings import decode_chunk, encode_chunk
from .errors import StoreError
from .geometry import Box, chunks_in, full_box
from .run import LOSSY_ENCODINGS, downsampled_region
from .sources import PlaneSource
from .stores import ChunkStore

BATCH_CHUNKS = 256  # chunks one verify task reads: enough to outweigh sending the task
WINDOW = 64  # batches in flight

# progress(chunks just checked, chunks in all)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Problem:
    """One chunk that is missing, damaged, or holds other voxels than it should."""

    level: int
    box: Box
    what: str

    def __str__(self) -> str:
        return f"level {self.level} chunk {self.box.chunk_name}: {self.what}"


@dataclass(frozen=True)
class Report:
    """What `verify_store` found."""

    problems: tuple[Problem, ...]
    n_chunks: int
    n_levels: int
    n_compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        """One line saying whether the volume is whole."""
        compared = ""
        if self.n_compared:
            compared = f"; the {self.n_compared} recomputed from the planes match"
        if self.ok:
            return (
                f"OK: all {self.n_chunks} chunks of {self.n_levels} levels are present and "
                f"decode{compared}"
            )
        return (
            f"DAMAGED: {len(self.problems)} of {self.n_chunks} chunks are missing, damaged or "
            "wrong; `--resume --repair` makes them again"
        )


def check_chunks(store: ChunkStore, level: int, boxes: list[Box]) -> list[Problem]:
    """Read and decode each chunk; picklable arguments, so executors can run it."""
    problems = []
    channels = store.pyramid.num_channels
    samples = (channels,) if channels > 1 else ()
    for box in boxes:
        try:
            (data,) = store.read_chunks(level, [box], keep=False)
        except Exception as exc:  # every reader failure is damage to report, not to raise
            problems.append(Problem(level, box, f"damaged ({exc})"))
            continue
        if data is None:
            problems.append(Problem(level, box, "missing"))
        elif data.shape != box.numpy_shape + samples:
            shape = box.numpy_shape + samples
            problems.append(Problem(level, box, f"holds {data.shape}, not {shape}"))
    return problems


def _batches(store: ChunkStore) -> Iterator[tuple[int, list[Box]]]:
    for level, scale in enumerate(store.pyramid.scales, start=1):
        batch: list[Box] = []
        for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
            batch.append(box)
            if len(batch) == BATCH_CHUNKS:
                yield level, batch
                batch = []
        if batch:
            yield level, batch


def _check_all(store: ChunkStore, executor: Executor | None) -> Iterator[tuple[int, list[Problem]]]:
    """(chunks checked, problems) per batch, with a bounded number of batches in flight."""
    if executor is None:
        for level, boxes in _batches(store):
            yield len(boxes), check_chunks(store, level, boxes)
        return
    pending: deque[tuple[int, Future[list[Problem]]]] = deque()
    for level, boxes in _batches(store):
        pending.append((len(boxes), executor.submit(check_chunks, store, level, boxes)))
        if len(pending) >= WINDOW:
            n, future = pending.popleft()
            yield n, future.result()
    while pending:
        n, future = pending.popleft()
        yield n, future.result()


def verify_store(
    store: ChunkStore,
    *,
    executor: Executor | None = None,
    source: PlaneSource | None = None,
    n_samples: int = 32,
    progress: Progress | None = None,
) -> Report:
    """Check every chunk of every level of `store` (on `executor` when given).

    With `source`, also recompute `n_samples` chunks per level and compare them: level 1 from
    the planes, each coarser level from the stored level before it (when that one is lossless).
    """
    total = sum(scale.n_chunks for scale in store.pyramid.scales)
    problems: list[Problem] = []
    for n_checked, found in _check_all(store, executor):
        problems.extend(found)
        if progress is not None:
            progress(n_checked, total)
    compared = 0
    if source is not None:
        method = _recorded_method(store)
        broken = {(p.level, p.box) for p in problems}
        for level in range(1, store.pyramid.n_levels + 1):
            for box in _sample(store, level, n_samples):
                if (level, box) in broken:
                    continue
                what = _compare(store, source, level, box, method)
                if what is None:
                    continue
                compared += 1
                if what:
                    problems.append(Problem(level, box, what))
    return Report(tuple(problems), total, store.pyramid.n_levels, compared)


def _sample(store: ChunkStore, level: int, n: int) -> list[Box]:
    """`n` chunks of `level` picked at random (the same ones for the same volume)."""
    scale = store.pyramid.scale(level)
    boxes = [box for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size)]
    return random.Random(f"{level}:{scale.size}").sample(boxes, min(n, len(boxes)))


def _recorded_method(store: ChunkStore) -> str:
    """How the volume's levels were made: as its pyramid says, else as its run record does (an
    info file does not say; records of runs before --downsample name none: the default)."""
    from .convert import RUN_FILE, recorded_method
    from .stores.base import STATE_DIR, load_json

    if store.pyramid.downsampling is not None:
        return store.pyramid.downsample_method
    try:
        run = load_json(store.files, f"{STATE_DIR}/{RUN_FILE}")
    except (StoreError, OSError, ValueError):  # a read-only URL keeps no run record
        run = None
    if run is None:
        return store.pyramid.downsample_method
    return recorded_method(run)


def _compare(
    store: ChunkStore, source: PlaneSource, level: int, box: Box, method: str
) -> str | None:
    """ "" when the stored chunk is what the planes make, a description when not, None when it
    cannot be recomputed here (a coarser level over a lossy one)."""
    pyramid = store.pyramid
    scale = pyramid.scale(level)
    if level == 1:
        expected = source.read(box)
    else:
        if pyramid.scale(level - 1).encoding in LOSSY_ENCODINGS:
            return None
        expected = downsampled_region(store, level, box, method=method)
    if scale.encoding in LOSSY_ENCODINGS:  # what a reader decodes from the exact voxels
        blob = encode_chunk(expected, scale.encoding)
        expected = decode_chunk(
            blob, scale.encoding, box.numpy_shape, pyramid.dtype, channels=pyramid.num_channels
        )
    stored = store.read_chunk(level, box)
    if stored is None:
        return "missing"
    if np.array_equal(stored, expected):
        return ""
    differ = int(np.count_nonzero(stored != expected))
    where = "the planes make" if level == 1 else f"level {level - 1} makes"
    return f"{differ} of {math.prod(box.numpy_shape)} voxels differ from what {where}"
