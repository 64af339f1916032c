"""Settings of faust's Kafka consumer that faust does not expose.

faust-streaming creates the processor's aiokafka consumer with ``fetch_max_wait_ms=1500``,
hard-coded (``faust/transport/drivers/aiokafka.py``). aiokafka fetches a partition only when
its previous batch has been consumed; while the agent still works on a batch of
``sg.commands``, the next fetch goes out for the other topics alone and, when they are
quiet, the broker holds it for the full wait. Every fetch of ``sg.commands`` then waits
behind it: step results sat up to 1.6 s in the topic while the processor idled (B5/B6, and
adding unrelated traffic to ``sg.events`` made the drain faster). A short wait keeps fetches
flowing; an idle processor then sends a few small fetches per second more.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 20
_wait_ms = FETCH_MAX_WAIT_MS

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = _wait_ms  # read by aiokafka when the consumer starts
    return consumer


def apply(fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Idempotent; call before the faust worker starts."""
    global _wait_ms
    _wait_ms = fetch_max_wait_ms
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
