"""The processor's consumer gets a short fetch wait (processors/faust_tuning.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from sluicegate.processors import faust_tuning


def test_apply_sets_a_short_fetch_wait_on_the_consumer_faust_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    made = SimpleNamespace(_fetch_max_wait_ms=1500)  # what faust hard-codes
    monkeypatch.setattr(faust_tuning, "_original", lambda self, transport: made)
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer",
                        faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    faust_tuning.apply()
    faust_tuning.apply()  # idempotent
    thread: Any = object.__new__(faust_aiokafka.AIOKafkaConsumerThread)
    consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer(thread, transport=None)
    assert consumer is made and consumer._fetch_max_wait_ms == faust_tuning.FETCH_MAX_WAIT_MS == 20


def test_aiokafka_still_reads_the_attribute_we_set() -> None:
    import inspect

    import aiokafka.consumer.consumer as consumer_module

    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(consumer_module.AIOKafkaConsumer.start)
