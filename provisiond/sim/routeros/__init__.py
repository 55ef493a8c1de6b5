"""A simulated MikroTik RouterOS API service (the binary API on 8728/8729).

Public surface of ``provisiond.sim.routeros``: ``RouterSim`` (the server),
``SimSettings`` (its knobs), ``ManualClock`` (drive timeouts from tests),
``Trap`` (what ``add_entry`` raises), ``ReceivedCommand`` (history rows) and
``RouterLoad`` (the router's work: scans, writes, streamed events, CPU time).
Layers, bottom up: ``codec`` (bytes <-> words) -> ``query``/``address``/
``values`` (pure rules) -> ``entry`` (one entry, its words) -> ``addresslist``
(one table) -> ``listen`` (change streams) and ``load`` (the CPU queue) ->
``state`` (one router) -> ``commands``/``session`` (one conversation) ->
``connection`` (one socket's threads; ``faults``: a test's cuts and stalls) ->
``server`` (the listener). Imports nothing from the rest of provisiond.
Citations of ``../shared/ROUTEROS.md`` name the team's sourced reference on the
RouterOS API, kept beside the repository, not in it.
"""

from .errors import Trap
from .load import RouterLoad
from .server import RouterSim
from .settings import ManualClock, SimSettings
from .state import ReceivedCommand

__all__ = ["ManualClock", "ReceivedCommand", "RouterLoad", "RouterSim", "SimSettings", "Trap"]
