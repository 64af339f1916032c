"""Stores and key codecs. Nothing here knows Kafka topics or HTTP.

* :mod:`sluicegate.state.codecs` — byte layouts of every key (documented, pinned by tests).
* :mod:`sluicegate.state.stores` — one small key-value interface, a memory and a RocksDB
  (rocksdict) backend; the same tests run on both.
* :mod:`sluicegate.state.run_state` — the durable state of one run, held by the function
  processor, and its public view.
* :mod:`sluicegate.state.run_view_store` — the API's read model of runs (by run id, by event id).
"""
