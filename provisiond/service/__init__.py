"""The daemon's parts that are not the pass itself: the systemd notify protocol, leader
election, the billing ``LISTEN`` thread, Prometheus metrics and ``/healthz``, and the
pass runner with per-target back-off.

``provisiond.daemon`` wires them together around an APScheduler job; nothing here
imports APScheduler, and nothing else in provisiond imports this package.
"""
