"""CoA-Request / Disconnect-Request sender (RFC 5176): the last step of a RADIUS apply.

``RadiusTarget.apply`` commits its rows, then hands this module one ``CoaRequest`` per
open session (identifiers taken verbatim from ``radacct``) whose policy changed. Each
request goes to the session's NAS (``radacct.nasipaddress``) on the CoA port, signed
with the per-NAS secret from FreeRADIUS's ``nas`` table or the shared secret from
``[coa]``; the answer comes back as one ``CoaResult`` per session: ``ack``, ``nak``
(with the NAS's Error-Cause), ``timeout``, ``unknown-nas`` (no secret for it) or
``error``. A session never raises: one silent router does not stop the others.

The only engine module that imports pyrad. Requests are sent concurrently by a small
thread pool; every request gets its own pyrad ``Client`` (one UDP socket), so no
client is shared between threads. Secrets never reach a log line or a result.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import pyrad.packet
from pyrad.client import Client, Timeout
from pyrad.dictionary import Dictionary

log = logging.getLogger(__name__)

Action = Literal["coa", "disconnect"]
Outcome = Literal["ack", "nak", "timeout", "unknown-nas", "error"]


def load_dictionary() -> Dictionary:
    """provisiond's own RADIUS dictionary (``provisiond/data/dictionary``)."""
    text = resources.files("provisiond").joinpath("data/dictionary").read_text(encoding="utf-8")
    import io

    return Dictionary(io.StringIO(text))


@dataclass(frozen=True, slots=True)
class CoaRequest:
    """One live session to act on. ``attributes`` are the new authorization (CoA only)."""

    action: Action
    nas: str  # radacct.nasipaddress: where the request goes
    username: str
    acct_session_id: str
    framed_ip: str = ""
    attributes: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return f"{self.action} {self.username} session {self.acct_session_id} on NAS {self.nas}"


@dataclass(frozen=True, slots=True)
class CoaResult:
    request: CoaRequest
    outcome: Outcome
    detail: str = ""  # the Error-Cause of a NAK, or why it failed

    @property
    def ok(self) -> bool:
        return self.outcome == "ack"


class _Secret:
    """A shared secret that never shows in a repr, a traceback's locals or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"


_ACK = {pyrad.packet.CoAACK, pyrad.packet.DisconnectACK}
_NAK = {pyrad.packet.CoANAK, pyrad.packet.DisconnectNAK}


class CoaSender:
    """Sends CoA/Disconnect-Requests; construct once, call ``send`` per apply."""

    def __init__(
        self,
        *,
        shared_secret: str | None,
        port: int = 3799,
        timeout: float = 2.0,
        retries: int = 3,
        workers: int = 8,
        dictionary: Dictionary | None = None,
    ) -> None:
        self._shared = _Secret(shared_secret)
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.workers = max(1, workers)
        self._dict = dictionary if dictionary is not None else load_dictionary()

    def __repr__(self) -> str:  # never the secret
        return f"CoaSender(port={self.port}, timeout={self.timeout}, retries={self.retries})"

    def send(
        self, requests: Sequence[CoaRequest], *, nas_secrets: Mapping[str, str] | None = None
    ) -> list[CoaResult]:
        """One result per request, in the same order. ``nas_secrets`` override the shared one."""
        if not requests:
            return []
        secrets = dict(nas_secrets or {})
        with ThreadPoolExecutor(
            max_workers=min(self.workers, len(requests)), thread_name_prefix="coa"
        ) as pool:
            results = list(pool.map(lambda r: self._send_one(r, secrets), requests))
        for res in results:
            log.info(
                "coa action=%s user=%s session=%s nas=%s outcome=%s%s",
                res.request.action, res.request.username, res.request.acct_session_id,
                res.request.nas, res.outcome, f" detail={res.detail}" if res.detail else "",
            )
        return results

    def _send_one(self, req: CoaRequest, secrets: Mapping[str, str]) -> CoaResult:
        secret = secrets.get(req.nas) or self._shared.reveal()
        if not secret:
            return CoaResult(req, "unknown-nas", f"no secret for NAS {req.nas} (nas table or [coa] secret)")
        client: Client | None = None
        try:
            client = Client(
                server=req.nas,
                coaport=self.port,
                secret=secret.encode(),
                dict=self._dict,
                retries=self.retries,
                timeout=self.timeout,
            )
            packet = self._build(client, req)
            reply = client.SendPacket(packet)
        except Timeout:
            return CoaResult(req, "timeout", f"no answer after {self.retries} x {self.timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - one bad session never stops the others
            return CoaResult(req, "error", f"{type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                client._CloseSocket()  # noqa: SLF001 - pyrad has no public close
        if reply.code in _ACK:
            return CoaResult(req, "ack")
        if reply.code in _NAK:
            causes = reply.get("Error-Cause") or []
            return CoaResult(req, "nak", ", ".join(str(c) for c in causes) or "no Error-Cause")
        return CoaResult(req, "error", f"unexpected reply code {reply.code}")

    def _build(self, client: Client, req: CoaRequest) -> Any:
        code = pyrad.packet.CoARequest if req.action == "coa" else pyrad.packet.DisconnectRequest
        packet = client.CreateCoAPacket(
            code=code,
            User_Name=req.username,
            Acct_Session_Id=req.acct_session_id,
            message_authenticator=True,
        )
        if req.framed_ip and _is_ipv4(req.framed_ip):
            packet["Framed-IP-Address"] = req.framed_ip
        if req.action == "coa":
            for name, value in req.attributes:
                packet.AddAttribute(name, self._typed(name, value))
        return packet

    def _typed(self, name: str, value: str) -> Any:
        attr = self._dict.attributes[name]  # KeyError: not in provisiond's dictionary
        if attr.type == "integer" and value.strip().lstrip("-").isdigit():
            return int(value)
        return value


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False
