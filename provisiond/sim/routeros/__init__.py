"""A simulated MikroTik RouterOS API service (the binary API on 8728/8729).

Public surface of ``provisiond.sim.routeros``: ``RouterSim`` (the server),
``SimSettings`` (its knobs), ``ManualClock`` (drive timeouts from tests),
``Trap`` (what ``add_entry`` raises) and ``ReceivedCommand`` (history rows).
Layers, bottom up: ``codec`` (bytes <-> words) -> ``query``/``address``/
``values`` (pure rules) -> ``addresslist`` (one table) -> ``state`` (one
router) -> ``commands``/``session`` (one conversation) -> ``server``
(sockets and threads). Imports nothing from the rest of provisiond.
"""

from .errors import Trap
from .server import RouterSim
from .settings import ManualClock, SimSettings
from .state import ReceivedCommand

__all__ = ["ManualClock", "ReceivedCommand", "RouterSim", "SimSettings", "Trap"]
