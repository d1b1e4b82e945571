"""An in-memory store, for tests and notebooks; holds every chunk in a dict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import Box
from .base import ChunkStore


@dataclass(frozen=True, eq=False)
class MemoryStore(ChunkStore):
    chunks: dict[tuple[int, Box], np.ndarray] = field(default_factory=dict)

    format_name = "memory"

    def prepare_level(self, level: int) -> None:
        pass

    def write_info(self) -> None:
        pass

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        self.chunks[(level, box)] = np.array(data, copy=True)

    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        return self.chunks.get((level, box))

    def __reduce__(self):
        return (type(self), (self.path, self.pyramid, self.chunks))
