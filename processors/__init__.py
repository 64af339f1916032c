"""The faust-streaming processors: router, function processor, timers, dispatcher.

Pure decisions live in ``routing``, ``run_decisions``, ``backoff``; ``faust_app`` is the
thin shell that loads state, calls a decision, persists and forwards.
"""
