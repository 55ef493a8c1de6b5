"""Simulators of the devices provisiond talks to, for demos, trials and tests.

Operators run ``python -m provisiond.sim`` to try a configuration without a
real router; the demo and the test-suite start ``RouterSim`` in-process. This
package stands apart from the engine: it never imports the rest of
provisiond (the RouterOS simulator needs only the standard library and
netaddr).
"""

from .routeros import ManualClock, ReceivedCommand, RouterLoad, RouterSim, SimSettings, Trap

__all__ = ["ManualClock", "ReceivedCommand", "RouterLoad", "RouterSim", "SimSettings", "Trap"]
