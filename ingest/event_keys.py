"""Event keys: each identifies one tenant (app). Stored hashed in the compacted ``sg.keys``.

A key is shown once, when created. Only its SHA-256 is stored; listings and logs show the
first 8 characters (:func:`mask`). Nobody can read a key back.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from ..ids import check_id
from ..kafka_clients import CompactedView, SyncProducer
from ..settings import Settings
from ..topics import ensure_core_topics
from ..wire import EventKeyRecord

KEY_PREFIX = "sgk_"
DEV_KEY = "dev"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mask(key: str) -> str:
    """What logs and listings may show of a key."""
    return key[:8] + "…" if len(key) > 8 else "…"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(settings: Settings, app_id: str) -> str:
    """Create a key for ``app_id``, store its hash, return the key (the only time it is seen)."""
    check_id(app_id, field="app")
    ensure_core_topics(settings)
    key = new_key()
    record = EventKeyRecord(app_id=app_id, prefix=mask(key), created_at=int(time.time() * 1000))
    SyncProducer(settings.bootstrap_servers).send_many(settings.keys_topic, [(hash_key(key), record.dumps())], 1)
    return key


class EventKeys:
    """Follows ``sg.keys``; answers which app a presented key belongs to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.view = CompactedView(settings.bootstrap_servers, settings.keys_topic,
                                  EventKeyRecord.model_validate_json)

    def start(self) -> "EventKeys":
        self.view.start()
        return self

    def app_for(self, key: str) -> str | None:
        """The app of ``key``, from what the view holds now (never blocks)."""
        if self.settings.dev_mode and key == DEV_KEY:
            return self.settings.dev_app_id
        record = self.view.items.get(hash_key(key))
        return record.app_id if isinstance(record, EventKeyRecord) else None

    def app_for_fresh(self, key: str, timeout: float = 1.0) -> str | None:
        """Like :meth:`app_for`, but first lets the view catch up (a key created a moment ago).
        Blocks up to ``timeout``: call it from a thread."""
        self.view.wait_caught_up(time.time(), timeout=timeout)
        return self.app_for(key)

    def listing(self) -> list[tuple[str, EventKeyRecord]]:
        return sorted(((h, r) for h, r in self.view.items.items() if isinstance(r, EventKeyRecord)),
                      key=lambda hr: hr[1].created_at)

    def stop(self) -> None:
        self.view.stop()
