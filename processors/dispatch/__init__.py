"""The dispatcher's pure decisions (issue 4): fair selection among ready backlogs
(``fair_selection``), keyed concurrency slots with leases (``concurrency``), throttle
(``throttle``), the values fixed per run at schedule time (``run_keys``), the ordered
in-memory backlogs (``backlogs``) and one window refill (``pump``). The shell that persists
and forwards is ``processors/dispatcher.py``."""
