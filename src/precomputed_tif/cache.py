"""A thread-safe least-recently-used cache bounded in bytes, shared by the server and the reader."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ByteCache:
    """Values by key, the least recently used dropped first once `capacity` bytes are held."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.size = 0
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.capacity // 4:
            return  # one huge value would evict everything else
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value, size)
            self.size += size
            while self.size > self.capacity:
                _, (_, old_size) = self._items.popitem(last=False)
                self.size -= old_size

    def __getitem__(self, key: Any) -> Any:
        item = self.get(key)
        return None if item is None else item[0]
