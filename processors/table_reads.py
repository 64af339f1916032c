"""Reading a faust table with one store lookup.

``table.get(key)`` on a faust ``Table`` goes through ``Mapping.get`` -> ``Table.__getitem__``,
which asks the store ``key in data`` and then ``data[key]``: two RocksDB reads, plus a sensor
call, for every command (~2 % of the processor's main thread under load). Our tables have no
default value, so reading the store directly returns the same thing with one read.

:func:`keys_in_order` walks one partition's keys in byte order, which faust's tables do not
offer (they iterate every partition, and a table's items were read as a whole).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def stored(table: Any, key: bytes) -> bytes | None:
    """``table.get(key)`` with one read of the table's store (``None`` when absent)."""
    return table.data.get(key)


def keys_in_order(table: Any, partition: int) -> Iterator[bytes]:
    """The keys of one partition of a table, in RocksDB byte order, read from the partition's
    store as they are consumed (nothing is held in memory). faust's rocksdb ``Store`` keeps one
    database per partition (``_db_for_partition`` opens it if needed); its own offset key is
    among the keys. Only for a partition this process owns."""
    db = table.data._db_for_partition(partition)
    it = db.iter()
    it.seek_to_first()
    while it.valid():
        yield it.key()
        it.next()


def items_from(table: Any, partition: int, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of one partition of a table in byte order from ``start`` (the first key
    when None), read as they are consumed. The same store access as :func:`keys_in_order`."""
    db = table.data._db_for_partition(partition)
    it = db.iter()
    if start is None:
        it.seek_to_first()
    else:
        it.seek(start)
    while it.valid():
        yield it.key(), it.value()
        it.next()
