"""The long-running service (``provisiond run``), above the engine.

``loop`` owns the process: signals, the APScheduler job, the threads around it. The
job calls ``passes.PassRunner`` (one ``engine.Reconciler`` pass, with per-target
back-off; full passes in a process of their own, ``worker``); around it ``leader`` (only one daemon writes), ``listen`` (a billing
``NOTIFY`` starts a pass), ``metrics`` (``/metrics``, ``/healthz``) and ``sdnotify``
(READY, STATUS, WATCHDOG). Only this package imports APScheduler; only the CLI imports
this package.
"""
