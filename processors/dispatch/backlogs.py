"""The ready backlogs of one dispatcher partition, ordered, in memory.

The durable truth is the ``dispatch`` table (one record per active run, see
``processors/dispatcher.py``); this index is rebuilt from it when a partition is assigned,
like the timer heap. Shape, as :func:`.fair_selection.select` reads it::

    by_app[app][function][key] -> SortedKeyList[Item]   (order_key order: started, score, id)

Keys and functions are kept in sorted dicts, so the DRR rings need no sort per refill.
Empty backlogs, functions and apps are removed at once: ``select`` never walks them.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict, SortedKeyList

from .fair_selection import Item, order_key

Location = tuple[str, str, str]  # (app, function, key)


class Backlogs:
    def __init__(self) -> None:
        self.by_app: dict[str, SortedDict] = {}
        self._where: dict[str, Location] = {}   # item id -> its backlog
        self._items: dict[str, Item] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._items

    def add(self, loc: Location, item: Item) -> None:
        """Add (or move) an item; adding the same item again is a no-op."""
        if self._items.get(item.item_id) == item and self._where.get(item.item_id) == loc:
            return
        self.remove(item.item_id)
        app, fn, key = loc
        fns = self.by_app.setdefault(app, SortedDict())
        keys = fns.setdefault(fn, SortedDict())
        backlog = keys.get(key)
        if backlog is None:
            backlog = keys[key] = SortedKeyList(key=order_key)
        backlog.add(item)
        self._where[item.item_id] = loc
        self._items[item.item_id] = item

    def remove(self, item_id: str) -> Item | None:
        item = self._items.pop(item_id, None)
        if item is None:
            return None
        app, fn, key = self._where.pop(item_id)
        fns = self.by_app[app]
        keys = fns[fn]
        backlog = keys[key]
        backlog.remove(item)
        if not backlog:
            del keys[key]
            if not keys:
                del fns[fn]
                if not fns:
                    del self.by_app[app]
        return item

    def ready(self, app: str) -> dict[str, SortedDict]:
        """The one-tenant ``ready`` mapping of ``app`` for :func:`.pump.pump`."""
        fns = self.by_app.get(app)
        return {app: fns} if fns else {}

    def depth(self, app: str, fn: str) -> int:
        keys = self.by_app.get(app, {}).get(fn)
        return sum(len(b) for b in keys.values()) if keys else 0

    def backlogs(self, app: str, fn: str) -> Iterator[tuple[str, int]]:
        """(key, depth) of each backlog of one function."""
        keys = self.by_app.get(app, {}).get(fn)
        if keys:
            for key, b in keys.items():
                yield key, len(b)

    def apps(self) -> list[str]:
        return list(self.by_app)

    def functions(self, app: str) -> list[str]:
        return list(self.by_app.get(app, {}))

    def location(self, item_id: str) -> Location | None:
        return self._where.get(item_id)
