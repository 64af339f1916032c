"""Sluicegate: self-hosted durable execution with flow control, on Apache Kafka.

The repository's top-level folders are installed as subpackages of this one:
``ingest/`` -> ``sluicegate.ingest``, ``processors/`` -> ``sluicegate.processors``,
``state/`` -> ``sluicegate.state``, ``sdk/`` -> ``sluicegate.sdk``.
"""

__version__ = "0.1.0"
