"""The Sonar billing source: Sonar's GraphQL API -> a ``Snapshot``.

First step of every pass when ``[source] type = "sonar"``. ``read()`` pages through
``accounts`` by keyset (sorted by id, ``id GT <last id seen>``), so an account added or
deleted in Sonar during the read never pushes another out of it, and follows what
``page_info`` says rather than the page size it asked for. Each account comes with its
status (and whether it activates the account), its delinquency flag, groups, RADIUS
usernames and every IP assignment reachable from it (its own, its RADIUS accounts', its
uninventoried MAC addresses', its addresses' inventory items' and their field data's),
all in the one query per page, and becomes the same ``Account`` value the SQL source
makes (``sql.aggregate``). Archived accounts are not read (``include_archived: false``):
to provisiond an archived account is a deleted one. Ids are Sonar's ``Int64Bit``, a
string on the wire; a number is taken too.
``read(accounts={…})`` reads just those accounts (a webhook's scoped pass); the
Snapshot's ``scope`` says so, and an id of it missing from the Snapshot is an account
Sonar no longer has.

Sonar allows 400 requests a minute per user, shared with everything else using the
token: requests are paced to stay under it, and on Sonar's limit answer the read waits
for the window and goes on, all within ``timeout``. Anything else -- no answer, a
refused token, a GraphQL ``errors`` answer, a page that is not what it should be, a
nested list longer than one page -- raises ``SonarError`` (a ``SourceError``) naming the
request and why: the reconciler then writes nothing. The token never appears in a
message or a log line, nor goes anywhere but ``url``: redirects are not followed, and to
a loopback ``url`` no proxy from the environment is used.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import time
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from provisiond.core.model import Snapshot
from provisiond.errors import SourceError
from provisiond.sources.sql import Row, aggregate

log = logging.getLogger(__name__)

LIMIT = 400  # requests per window and user, as Sonar documents
WINDOW = 60.0  # seconds; Sonar resets the count every minute


class SonarError(SourceError):
    """A failed Sonar request. ``kind`` says what is wrong: url, token, schema, limit,
    timeout or answer (an answer provisiond cannot use)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def _collection(fields: str) -> str:
    return f"(paginator: $nested) {{ entities {{ {fields} }} page_info {{ total_count }} }}"


_IPS = "ip_assignments" + _collection("subnet")
ACCOUNT_FIELDS = (
    "id name is_delinquent account_status { name activates_account } "
    "account_groups" + _collection("name") + " "
    + _IPS + " "
    "radius_accounts" + _collection("username " + _IPS) + " "
    "uninventoried_mac_addresses" + _collection("id " + _IPS) + " "
    "addresses" + _collection(
        "id inventory_items" + _collection(
            "id " + _IPS + " inventory_model_field_data" + _collection("id " + _IPS)))
)
QUERY = (
    "query provisiondAccounts($paginator: Paginator, $search: [Search], $sorter: [Sorter], "
    "$nested: Paginator) { accounts(paginator: $paginator, search: $search, sorter: $sorter, "
    "include_archived: false) "
    "{ entities { " + ACCOUNT_FIELDS + " } "
    "page_info { page records_per_page total_count total_pages } } }"
)
BY_ID = [{"attribute": "id", "direction": "ASC"}]


class _Pacer:
    """At most ``limit`` requests in any ``window`` seconds, counted from each answer.

    Counting from when an answer arrived (not when the request left) keeps a fixed
    server-side window from ever seeing more than ``limit``, whatever the latency.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._done: collections.deque[float] = collections.deque()

    def wait(self, deadline: float) -> float:
        """Seconds slept; raises nothing, returns -1 when the wait would pass ``deadline``."""
        now = time.monotonic()
        while self._done and now - self._done[0] >= self.window:
            self._done.popleft()
        if len(self._done) < self.limit:
            return 0.0
        until = self._done[0] + self.window
        if until > deadline:
            return -1.0
        time.sleep(until - now)
        self._done.popleft()
        return until - now

    def done(self) -> None:
        self._done.append(time.monotonic())


class SonarSource:
    """Reads accounts from one Sonar instance. ``url`` is the instance (``https://x.sonar.software``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        page_size: int = 100,
        timeout: float = 300.0,
        limit: int = LIMIT,
        window: float = WINDOW,
    ) -> None:
        if any(not (" " < c <= "~") for c in token):  # settings refuse it first (ConfigError)
            raise SonarError("token", "the token must be one line of printable ASCII without spaces")
        self.endpoint = url.rstrip("/") + "/api/graphql"
        self.display = self.endpoint
        self._token = token
        self.page_size = page_size
        self.timeout = timeout
        self.window = window
        self._pacer = _Pacer(limit, window)
        self._client = httpx.Client(headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }, follow_redirects=False, trust_env=not _loopback(url))
        self._count = 0
        # httpx: one INFO line per request; httpcore: DEBUG lines about every request.
        for name in ("httpx", "httpcore"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)

    def close(self) -> None:
        self._client.close()

    # -- reading --------------------------------------------------------------------

    def read(self, *, accounts: Collection[str] | None = None) -> Snapshot:
        """Every account (``accounts=None``) or just those; all of them, or ``SonarError``."""
        read_at = datetime.now(UTC)
        deadline = time.monotonic() + self.timeout
        self._count = 0
        started = time.monotonic()
        scope = None if accounts is None else frozenset(str(a).strip() for a in accounts)
        if scope is None:
            entities = self._all(deadline)
        else:
            entities = self._some(scope, deadline)
        snapshot = aggregate(self._rows(entities), read_at=read_at, scope=scope)
        for p in snapshot.problems:
            log.warning("source: skipped Sonar data: %s", p)
        log.info("source: read from Sonar accounts=%d requests=%d duration=%.1fs skipped=%d%s",
                 len(snapshot), self._count, time.monotonic() - started, len(snapshot.problems),
                 "" if accounts is None else f" scoped={len(accounts)}")
        return snapshot

    def check(self) -> None:
        """One small query with every field a read uses: proves URL, token and schema."""
        self._count = 0
        self._post("Sonar request 1 (check: the first account)", {
            "paginator": {"page": 1, "records_per_page": 1}, "sorter": BY_ID,
            "nested": {"page": 1, "records_per_page": 1}},
            deadline=time.monotonic() + min(self.timeout, 30.0))

    def _all(self, deadline: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        last: int | None = None
        while True:
            where = "accounts from the first" if last is None else f"accounts after id {last}"
            variables: dict[str, Any] = {"paginator": {"page": 1, "records_per_page": self.page_size},
                                         "sorter": BY_ID, "nested": self._nested()}
            if last is not None:
                variables["search"] = [{"integer_fields": [
                    {"attribute": "id", "search_value": last, "operator": "GT"}]}]
            what = f"Sonar request {self._count + 1} ({where})"
            entities, total = self._page(what, variables, deadline, after=last)
            out += entities
            if not entities or total <= len(entities):
                return out
            last = entities[-1]["id"]

    def _some(self, accounts: Collection[str], deadline: float) -> list[dict[str, Any]]:
        wanted = sorted({int(a) for a in accounts if str(a).strip().isdigit()})
        out: list[dict[str, Any]] = []
        while wanted:
            chunk = wanted[:self.page_size]
            what = (f"Sonar request {self._count + 1} (accounts {', '.join(map(str, chunk[:5]))}"
                    f"{' …' if len(chunk) > 5 else ''})")
            variables = {
                "paginator": {"page": 1, "records_per_page": len(chunk)}, "sorter": BY_ID,
                "nested": self._nested(),
                "search": [{"integer_fields": [{"attribute": "id", "search_value": i, "operator": "EQ"}]}
                           for i in chunk],
            }
            entities, total = self._page(what, variables, deadline, after=None)
            out += [e for e in entities if e["id"] in set(chunk)]
            if total <= len(entities):
                wanted = wanted[len(chunk):]  # the rest of the chunk is not in Sonar (deleted)
            else:  # a capped page: go on after the last one returned
                wanted = [i for i in wanted if i > entities[-1]["id"]]
        return out

    def _nested(self) -> dict[str, int]:
        return {"page": 1, "records_per_page": self.page_size}

    def _page(self, what: str, variables: dict[str, Any], deadline: float,
              *, after: int | None) -> tuple[list[dict[str, Any]], int]:
        data = self._post(what, variables, deadline)
        coll = data.get("accounts")
        if not isinstance(coll, dict) or not isinstance(coll.get("entities"), list):
            raise SonarError("answer", f"{what}: the answer has no accounts.entities")
        info = coll.get("page_info") or {}
        try:
            total = int(info["total_count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SonarError("answer", f"{what}: page_info.total_count missing or not a number") from exc
        entities = []
        previous = after
        for raw in coll["entities"]:
            if raw is None:  # the schema lets an entity be null: nothing to read
                continue
            account_id = _int64(raw.get("id") if isinstance(raw, dict) else None)
            if account_id is None:
                raise SonarError("answer", f"{what}: an account without a numeric id: {raw!r:.80}")
            if previous is not None and account_id <= previous:
                raise SonarError("answer", f"{what}: account {account_id} out of id order "
                                           f"(after {previous}); the page cannot be trusted")
            previous = account_id
            entities.append({**raw, "id": account_id})
        if not entities and total > 0:
            raise SonarError("answer", f"{what}: page_info counts {total} account(s) but the page is empty")
        return entities, total

    # -- one request ----------------------------------------------------------------

    def _post(self, what: str, variables: dict[str, Any], deadline: float) -> dict[str, Any]:
        backoff = self.window / 6
        while True:
            slept = self._pacer.wait(deadline)
            if slept < 0:
                raise SonarError("timeout", f"{what}: pacing under Sonar's request limit would pass "
                                            f"source.timeout ({self.timeout:g}s); read failed")
            if slept > 0.5:
                log.info("source: paced under Sonar's request limit: waited %.1fs", slept)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SonarError("timeout", f"{what}: source.timeout ({self.timeout:g}s) ran out")
            self._count += 1
            try:
                resp = self._client.post(self.endpoint, json={"query": QUERY, "variables": variables},
                                         timeout=remaining)
            except httpx.TimeoutException as exc:
                raise SonarError("timeout", f"{what}: no answer from {self.display} within "
                                            f"source.timeout ({self.timeout:g}s)") from exc
            except httpx.HTTPError as exc:
                raise SonarError("url", f"{what}: cannot reach {self.display}: "
                                        f"{self._clean(str(exc) or type(exc).__name__)}") from exc
            finally:
                self._pacer.done()
            body = _json(resp)
            limited = _limit_message(resp.status_code, body)
            if limited is not None:
                delay = min(backoff, self.window)
                if time.monotonic() + delay > deadline:
                    raise SonarError("limit", f"{what}: Sonar's request limit ({limited}) still "
                                              f"holds and source.timeout ({self.timeout:g}s) runs out; "
                                              "read failed")
                log.warning("source: %s: Sonar's request limit (%s); waiting %.1fs",
                            what, limited, delay)
                time.sleep(delay)
                backoff *= 2
                continue
            return self._data(what, resp, body)

    def _data(self, what: str, resp: httpx.Response, body: Any) -> dict[str, Any]:
        status = resp.status_code
        if status in (401, 403):
            raise SonarError("token", f"{what}: Sonar refused the token (HTTP {status}"
                                      f"{': ' + self._snippet(body) if body is not None else ''})")
        if body is None:
            raise SonarError("url", f"{what}: {self.display} answered HTTP {status} "
                                    f"({resp.headers.get('content-type', 'no type')}), not "
                                    "Sonar's JSON: is source.url the Sonar instance?")
        if isinstance(body, dict) and body.get("errors"):
            errors = body["errors"] if isinstance(body["errors"], list) else [body["errors"]]
            messages = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e)
                                 for e in errors[:3])
            raise SonarError("schema", f"{what}: GraphQL error: {self._clean(messages)}")
        if status != 200:
            raise SonarError("answer", f"{what}: HTTP {status}: {self._snippet(body)}")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise SonarError("answer", f"{what}: an answer without data: {self._snippet(body)}")
        return data

    def _snippet(self, body: Any) -> str:
        text = body.get("error") or body.get("message") if isinstance(body, dict) else None
        return self._clean(str(text if text else body))[:200]

    def _clean(self, text: str) -> str:
        """``text`` without the token, as written or as a repr/escaped form shows it."""
        if not self._token:
            return text
        forms = {self._token, repr(self._token)[1:-1], repr(self._token.encode())[2:-1],
                 self._token.encode("unicode_escape").decode("ascii")}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text

    # -- entities -> rows -------------------------------------------------------------

    def _rows(self, entities: list[dict[str, Any]]) -> Iterator[Row]:
        """One row per value (aggregate unions them), so one bad address skips only itself."""
        for e in entities:
            account_id = e["id"]
            account_status = e.get("account_status")
            if account_status is not None and not isinstance(account_status, dict):
                raise SonarError("answer", f"account {account_id}: account_status is not an "
                                           f"object: {account_status!r:.80}")
            status = (account_status or {}).get("name")
            # No status (Sonar's schema allows it): nothing activates the account.
            active = _flag(account_id, "account_status.activates_account",
                           (account_status or {}).get("activates_account", False))
            delinquent = _flag(account_id, "is_delinquent", e.get("is_delinquent"))
            name = e.get("name")
            yield account_id, name, status, None, None, None, active, delinquent
            for group in _entities(e, "account_groups", account_id):
                yield account_id, name, status, group.get("name"), None, None, active, delinquent
            for subnet in _subnets(e, account_id):
                yield account_id, name, status, None, subnet, None, active, delinquent
            for radius in _entities(e, "radius_accounts", account_id):
                yield account_id, name, status, None, None, radius.get("username"), active, delinquent


def _flag(account_id: int, field: str, value: Any) -> bool:
    """A Boolean! of Sonar's; anything else makes the page untrustworthy."""
    if not isinstance(value, bool):
        raise SonarError("answer", f"account {account_id}: {field} is not true or false: "
                                   f"{value!r:.40}")
    return value


def _subnets(account: dict[str, Any], account_id: int) -> Iterator[Any]:
    """Every IP assignment reachable from an account (../shared/SONAR.md §3, as LibreQoS reads them)."""
    owners = [account]
    owners += _entities(account, "radius_accounts", account_id)
    owners += _entities(account, "uninventoried_mac_addresses", account_id)
    for address in _entities(account, "addresses", account_id):
        for item in _entities(address, "inventory_items", account_id):
            owners.append(item)
            owners += _entities(item, "inventory_model_field_data", account_id)
    for owner in owners:
        for ip in _entities(owner, "ip_assignments", account_id):
            yield ip.get("subnet")


def _entities(obj: dict[str, Any], name: str, account_id: int) -> list[dict[str, Any]]:
    """A nested collection, whole: one longer than the page Sonar gave fails the read."""
    coll = obj.get(name)
    if coll is None:
        return []
    entities = coll.get("entities") if isinstance(coll, dict) else None
    if not isinstance(entities, list):
        raise SonarError("answer", f"account {account_id}: {name} is not a collection")
    page_info = coll.get("page_info")
    if page_info is not None and not isinstance(page_info, dict):
        raise SonarError("answer", f"account {account_id}: {name}.page_info is not an object: "
                                   f"{page_info!r:.80}")
    total = _int64((page_info or {}).get("total_count"))
    if total is not None and total > len(entities):
        raise SonarError("answer", f"account {account_id}: {name} has {total} entries but Sonar "
                                   f"returned {len(entities)} in one page; read failed "
                                   "(nested lists longer than one page are not read)")
    return [x for x in entities if isinstance(x, dict)]


def _loopback(url: str) -> bool:
    """Whether ``url`` is on this machine: then no proxy from http_proxy & co. sees the token.

    A real Sonar (https) honours the operator's proxy settings. Redirects are never
    followed, so the Authorization header goes to ``url`` and nowhere else."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int64(value: Any) -> int | None:
    """Sonar's Int64Bit, which may arrive as a JSON number or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _limit_message(status: int, body: Any) -> str | None:
    """Sonar's limit answer (``{"error": "Request limit of 400/min reached."}``), any status."""
    if isinstance(body, dict) and "data" not in body and isinstance(body.get("error"), str) \
            and "limit" in body["error"].lower():
        return str(body["error"])
    if status == 429:
        return "HTTP 429"
    return None
