"""One small ordered key-value interface; a memory backend and a RocksDB (rocksdict) backend.

Keys and values are bytes. ``scan_prefix`` walks keys in byte order, which is what the
time-ordered codecs in :mod:`sluicegate.state.codecs` rely on.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Iterator, Protocol


class KeyValueStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes] = ...) -> None: ...
    def scan_prefix(self, prefix: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]: ...
    def scan_from(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...
    def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes] = []) -> None:  # noqa: B006
        for k, v in puts.items():
            if k not in self._data:
                bisect.insort(self._keys, k)
            self._data[k] = v
        for k in deletes:
            if self._data.pop(k, None) is not None:
                del self._keys[bisect.bisect_left(self._keys, k)]

    def scan_prefix(self, prefix: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        for n, item in enumerate(self.scan_from(prefix, prefix)):
            if limit is not None and n >= limit:
                return
            yield item

    def scan_from(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys ``>= start`` that begin with ``prefix``, in byte order (a cursor's seek)."""
        i = bisect.bisect_left(self._keys, start)
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            k = self._keys[i]
            value = self._data.get(k)
            if value is not None:
                yield k, value
            i = bisect.bisect_right(self._keys, k)  # robust to keys inserted meanwhile

    def close(self) -> None:
        pass


class RocksStore:
    """RocksDB through rocksdict, in raw-bytes mode; batches are atomic WriteBatches."""

    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict

        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=Options(raw_mode=True))

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes] = []) -> None:  # noqa: B006
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k, v in puts.items():
            wb.put(k, v)
        for k in deletes:
            wb.delete(k)
        self._db.write(wb)

    def scan_prefix(self, prefix: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        for n, item in enumerate(self.scan_from(prefix, prefix)):
            if limit is not None and n >= limit:
                return
            yield item

    def scan_from(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys ``>= start`` that begin with ``prefix``, in byte order (a cursor's seek)."""
        it = self._db.iter()
        it.seek(start)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            yield k, it.value()
            it.next()

    def close(self) -> None:
        self._db.close()
