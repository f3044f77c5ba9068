"""A bounded least-recently-used cache, for what services keep in memory per consent, nonce or
signer. A module of its own, with no database in it: clients and the query path use it too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_MISSING = object()


class LRU(Generic[K, V]):
    """A cache of at most `limit` entries: the least recently used one goes when a new one comes.

    `keep(value)` names entries that must not go yet (their only copy is here); the cache may
    then hold more than `limit` until they may. Thread-safe: stores are read from worker threads.
    """

    def __init__(self, limit: int, keep: Callable[[V], bool] | None = None) -> None:
        if limit < 1:
            raise ValueError("an LRU holds at least one entry")
        self.limit = limit
        self._keep = keep
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K, default=None):
        """The value (now the most recently used), or `default` when it is not held."""
        with self._lock:
            value = self._entries.get(key, _MISSING)
            if value is _MISSING:
                return default
            self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            self._evict()

    def pop(self, key: K, default=None):
        with self._lock:
            return self._entries.pop(key, default)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self) -> None:
        excess = len(self._entries) - self.limit
        if excess <= 0:
            return
        if self._keep is None:
            for _ in range(excess):
                self._entries.popitem(last=False)
            return
        gone = []
        for k, v in self._entries.items():  # oldest first; usually the first one may go
            if not self._keep(v):
                gone.append(k)
                if len(gone) == excess:
                    break
        for k in gone:
            del self._entries[k]
