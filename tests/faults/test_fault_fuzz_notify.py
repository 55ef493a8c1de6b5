"""NOTIFY payloads generated with hypothesis, sent through a real PostgreSQL to the
daemon's billing listener: whatever the payload (empty, 7,999 bytes, control
characters, JSON of the wrong shape, RouterOS word syntax), the listener stays
connected, logs no error, and asks for a pass.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
import pytest
from faultlib import Trials
from harness import pg_kwargs, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisiond.daemon.listen import BillingListener

CHANNEL = "provisiond"
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200)
json_payloads = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=10,
).map(json.dumps)
payloads = st.one_of(
    text, json_payloads,
    st.sampled_from(["", " ", "{", "}", "[1,", "null", '{"accounts": "x"}', '{"accounts": [null, {}, 1e999]}',
                     '{"account_id": "1\\n2"}', "=list=x", "\x01\x7f", "x" * 7999, "1" * 7999,
                     '{"accounts": [' + ",".join(['"1"'] * 1500) + "]}"]),
)
SENT = Trials("hypothesis NOTIFY payloads (listener on PostgreSQL)")


@pytest.fixture
def listener(pg_url: str) -> Any:
    calls: list[tuple[Any, ...]] = []
    lst = BillingListener(pg_url, CHANNEL, on_change=lambda *a, **k: calls.append(a))
    lst.start()
    wait_until(lambda: lst.connected, what="LISTEN")
    yield lst, calls
    lst.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(payloads, min_size=1, max_size=4))
def test_any_notify_payload_asks_for_a_pass(listener: Any, pg_url: str, batch: list[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    lst, calls = listener
    before = len(calls)
    caplog.set_level(logging.WARNING, logger="provisiond")
    with SENT.trial() as outcome:
        with psycopg.connect(**{**pg_kwargs(pg_url), "autocommit": False}) as c:
            for p in batch:
                c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, p))
        outcome["payloads"] += len(batch)
        outcome["lost"] += 1  # until the listener is seen asking for a pass
        wait_until(lambda: len(calls) > before, timeout=10, what="a pass requested")
        outcome["lost"] -= 1
        outcome["disconnected"] += not lst.connected
        outcome["warnings"] += len([r for r in caplog.records if r.levelno >= logging.WARNING])
        assert lst.connected
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_notify_fuzz_figures() -> None:
    SENT.check("disconnected", "warnings")
