"""The RouterOS target: provisiond's address lists on MikroTik routers over the API.

Layered as librouteros is, each module on the ones before it: ``pipeline`` (a window of
tagged commands behind a ``Wire`` protocol), ``wire`` (the session: TLS, transport,
librouteros, error classification), ``commands`` (the words sent), ``reader`` (a full
read compared as it arrives), ``writer`` (an apply's commands and answers) and
``target`` (``RouterTarget``, what the engine calls).
"""

from provisiond.targets.routeros.commands import SCOPE_CHUNK
from provisiond.targets.routeros.target import Marker, RouterTarget
from provisiond.targets.routeros.wire import ApiWire, BufferedTransport

__all__ = ["ApiWire", "BufferedTransport", "Marker", "RouterTarget", "SCOPE_CHUNK"]
