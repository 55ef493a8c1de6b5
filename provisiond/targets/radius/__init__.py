"""The FreeRADIUS target: provisiond's ``radusergroup`` / ``radreply`` rows and the
CoA / Disconnect-Requests their changes call for.

Each module on the ones before it: ``tables`` (FreeRADIUS's SQL tables), ``connect``
(the engine, ``check-config``'s checks), ``rows`` (an apply's SQL writes), ``sessions``
(live sessions and the requests a plan calls for) and ``target`` (``RadiusTarget``,
what the engine calls, and ``build_radius_target``).
"""

from provisiond.targets.radius.connect import SAFE_USERNAME_CHARS, check_connection, check_radius_config
from provisiond.targets.radius.target import CoaClient, RadiusLedger, RadiusTarget, build_radius_target

__all__ = [
    "CoaClient",
    "RadiusLedger",
    "RadiusTarget",
    "SAFE_USERNAME_CHARS",
    "build_radius_target",
    "check_connection",
    "check_radius_config",
]
