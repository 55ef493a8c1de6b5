"""Simulators of the devices provisiond talks to, for demos, trials and tests.

Operators run ``python -m provisiond.sim`` to try a configuration without a
real router; the demo and the test-suite start ``RouterSim`` in-process. This
package stands apart from the engine: it imports only the standard library
and netaddr, never the rest of provisiond.
"""

from .routeros import ManualClock, ReceivedCommand, RouterSim, SimSettings, Trap

__all__ = ["ManualClock", "ReceivedCommand", "RouterSim", "SimSettings", "Trap"]
