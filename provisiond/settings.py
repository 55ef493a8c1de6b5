"""The configuration: one TOML file, overridable by ``PROVISIOND_*`` environment variables.

Read by the CLI and the daemon (``load``); everything downstream gets typed values.
Unknown keys are errors. Every problem is reported at once with its key path
(``router[1].port: …``) through ``ConfigError.problems``. Secrets are ``SecretStr``
and are read from files (``password_file``; a relative path is looked up in systemd's
``$CREDENTIALS_DIRECTORY``) or the environment, never logged.

This module is longer than 600 lines because it is the config file's one schema: every
section's model, its validation and the cross-section checks sit in the order of
``config/provisiond.reference.toml``, so a key is found in one place.
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import netaddr
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from provisiond.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/provisiond/provisiond.toml")

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Any) -> float:
    """``"2s"``, ``"1h30m"``, ``"500ms"`` or a number of seconds -> seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 24h, 1h30m)")
    else:
        raise ValueError(f"not a duration: {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"not a duration provisiond can wait for: {value!r} (at most 10 years)")
    return seconds


MAX_DURATION = 10 * 366 * 86400.0  # socket timeouts and timedelta both overflow far beyond
Duration = Annotated[float, BeforeValidator(parse_duration)]
# A timeout or interval of 0 would mean "do not wait" (a non-blocking socket, a busy loop).
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # FreeRADIUS's priority column


CREDENTIALS_HINT = (
    "by hand, point $CREDENTIALS_DIRECTORY at the files the unit's LoadCredential= lines name, e.g. "
    "sudo CREDENTIALS_DIRECTORY=/etc/provisiond/credentials /opt/provisiond/bin/provisiond check-config"
)


def secret_path(path: Path) -> tuple[Path, str]:
    """Where a ``*_file`` is read from, and how that was decided (for messages).

    An absolute path is used as it is. A relative one names a systemd credential: it is
    looked up in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``), or, when that is not
    set (run by hand), relative to the current directory.
    """
    if path.is_absolute():
        return path, ""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        return Path(creds) / path, f"relative names are looked up in $CREDENTIALS_DIRECTORY ({creds})"
    return Path.cwd() / path, (
        "relative names are looked up in $CREDENTIALS_DIRECTORY, which is not set, so in the "
        f"current directory ({Path.cwd()}); {CREDENTIALS_HINT}"
    )


def _read_secret(path: Path, what: str) -> str:
    full, how = secret_path(path)
    try:
        return full.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([f"{what}: cannot read {full}: {reason}" + (f" ({how})" if how else "")]) from exc


def _read_token(path: Path, what: str) -> str:
    """A token file's one line: surrounding blanks stripped, then printable ASCII only.

    A second line or a control character would end up in an HTTP header, where httpx
    refuses it with the whole header (token included) in its message."""
    return _check_token(_read_secret(path, what).strip(), what)


def _check_token(token: str, what: str) -> str:
    if any(not (" " < c <= "~") for c in token):
        raise ConfigError([f"{what}: the token must be one line of printable ASCII without "
                           "spaces (a second line or a control character is not allowed)"])
    return token


def _unknown_keys(model: type[BaseModel], data: Mapping[str, Any]) -> bool:
    """Whether ``data`` has keys the model does not know: then "unknown key; did you mean"
    says what is wrong, and a rule such as "set password_file" would only add noise."""
    return any(k not in model.model_fields for k in data)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SONAR_TIMEOUT = 300.0  # a whole Sonar read: 1,000 requests at 400/min fit in it


class SourceSettings(_Model):
    type: Literal["sql", "sonar"] = "sql"
    url: SecretStr
    query: str | None = None  # sql: required
    password_file: Path | None = None  # sql
    token: SecretStr | None = None  # sonar: a personal access token (prefer token_file)
    token_file: Path | None = None  # sonar
    page_size: int | None = Field(None, ge=1, le=10000)  # sonar: default 100
    timeout: PositiveDuration = 60.0  # sonar: default SONAR_TIMEOUT
    max_account_drop: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _sonar_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "sonar" and data.get("timeout") is None:
            data = {**data, "timeout": SONAR_TIMEOUT}
        return data

    @model_validator(mode="after")
    def _by_type(self) -> SourceSettings:
        problems = []
        if self.type == "sql":
            if self.query is None:
                problems.append("query: required key is missing")
            for key in ("token", "token_file", "page_size"):
                if getattr(self, key) is not None:
                    problems.append(f'{key}: only for type = "sonar"')
        else:
            for key in ("query", "password_file"):
                if getattr(self, key) is not None:
                    problems.append(f'{key}: not used with type = "sonar"')
            if (self.token is None) == (self.token_file is None):
                problems.append("token_file: set token_file or token, not both"
                                if self.token is not None else "token_file: set token_file (or token)")
            problems += _sonar_url_problems(self.url.get_secret_value())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def sonar_page_size(self) -> int:
        return self.page_size if self.page_size is not None else 100

    def sonar_token(self) -> str:
        if self.token is not None:
            return _check_token(self.token.get_secret_value().strip(), "source.token")
        assert self.token_file is not None
        return _read_token(self.token_file, "source.token_file")

    def resolved_url(self) -> str:
        from sqlalchemy.engine import make_url

        if self.type == "sonar":
            return self.url.get_secret_value()
        url = make_url(self.url.get_secret_value())
        if self.password_file is not None:
            url = url.set(password=_read_secret(self.password_file, "source.password_file"))
        return url.render_as_string(hide_password=False)

    def display_url(self) -> str:
        from sqlalchemy.engine import make_url

        if self.type == "sonar":
            return self.url.get_secret_value()
        return make_url(self.url.get_secret_value()).render_as_string(hide_password=True)


def _sonar_url_problems(url: str) -> list[str]:
    """Sonar is reached over https://; plain http:// only to a loopback address (a test double)."""
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        return [f"url: not a URL: {exc}"]
    if parts.scheme not in ("http", "https") or not host:
        return ["url: the Sonar instance's https:// URL (provisiond appends /api/graphql)"]
    if parts.username or parts.password or parts.query or parts.fragment:
        return ["url: just the instance's address, without credentials, query or fragment"]
    if parts.scheme == "http":
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return [f"url: http:// only to a loopback address (the token would cross the "
                    f"network in clear text); use https://{host}"]
    return []


class StateSettings(_Model):
    url: SecretStr = SecretStr("sqlite:////var/lib/provisiond/state.db")


class RouterSettings(_Model):
    name: str = Field(min_length=1)
    host: str
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None
    tls_verify: bool = True
    fingerprint: str | None = None  # sha256 of the router's certificate, hex (colons allowed)
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None
    legacy_login: bool = False  # RouterOS before 6.43: MD5 challenge login
    connect_timeout: PositiveDuration = 10.0
    timeout: PositiveDuration = 60.0  # every read from the router; big lists need a generous one
    connections: int = Field(2, ge=1, le=8)  # API sessions used at once for very large batches of adds
    pipeline: int = Field(256, ge=1, le=4096)  # tagged commands in flight per API session

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is None:
            return None
        hexed = v.replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", hexed):
            raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
        return hexed

    @model_validator(mode="before")
    @classmethod
    def _password(cls, data: Any) -> Any:
        if isinstance(data, dict) and not _unknown_keys(cls, data):
            has_pw, has_file = data.get("password") is not None, data.get("password_file") is not None
            if not has_pw and not has_file:
                raise ValueError("set password_file (or password)")
            if has_pw and has_file:
                raise ValueError("set password_file or password, not both")
        return data

    @property
    def api_port(self) -> int:
        return self.port if self.port is not None else (8729 if self.tls else 8728)

    def secret(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        assert self.password_file is not None
        return _read_secret(self.password_file, f"router {self.name}: password_file")


SELECTOR_KEYS = ("group", "groups", "status", "statuses", "active", "delinquent")


class _Selector(_Model):
    """Which accounts a mapping selects (``core.model.Match``): every key given must hold.

    ``group`` or ``groups`` (any of them), ``status`` or ``statuses`` (any, by name),
    ``active`` (the account's status activates it, or not), ``delinquent`` (billing's
    flag); at least one. ``group`` with ``groups`` (or ``status`` with ``statuses``) is
    refused: which one was meant is a guess.
    """

    group: str | None = Field(None, min_length=1)
    groups: builtins.list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    status: str | None = Field(None, min_length=1)
    statuses: builtins.list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    active: bool | None = None
    delinquent: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _some_selector(cls, data: Any) -> Any:
        if not isinstance(data, dict) or _unknown_keys(cls, data):
            return data
        given = [k for k in SELECTOR_KEYS if data.get(k) is not None]
        if not given:
            raise ValueError("set at least one of " + ", ".join(SELECTOR_KEYS))
        for one, many in (("group", "groups"), ("status", "statuses")):
            if one in given and many in given:
                raise ValueError(f"set {one} or {many}, not both "
                                 f"(put {data[one]!r} in {many} to select any of them)")
        return data

    def selector_keys(self) -> builtins.list[str]:
        return [k for k in SELECTOR_KEYS if getattr(self, k) is not None]

    def describe(self) -> str:
        return " and ".join(f"{k} {getattr(self, k)!r}" for k in self.selector_keys())


class AddressListMapping(_Selector):
    list: str = Field(min_length=1)
    routers: builtins.list[str] = Field(default_factory=lambda: ["*"])

    @field_validator("list")
    @classmethod
    def _list_name(cls, v: str) -> str:
        if v != v.strip() or any(c in v for c in "\r\n\t"):
            raise ValueError("list names cannot have surrounding spaces or control characters")
        return v


class SafetySettings(_Model):
    max_delete_ratio: float = Field(0.3, ge=0.0)
    max_update_ratio: float = Field(0.3, ge=0.0)
    min_existing: int = Field(10, ge=0)


class RadiusSettings(_Model):
    url: SecretStr
    password_file: Path | None = None
    timeout: PositiveDuration = 30.0

    def resolved_url(self) -> str:
        from sqlalchemy.engine import make_url

        url = make_url(self.url.get_secret_value())
        if self.password_file is not None:
            url = url.set(password=_read_secret(self.password_file, "radius.password_file"))
        return url.render_as_string(hide_password=False)

    def display_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url.get_secret_value()).render_as_string(hide_password=True)


CoaMode = Literal["coa", "disconnect", "off"]


class RadiusGroupMapping(_Selector):
    radius_group: str = Field(min_length=1)
    priority: int = Field(0, ge=INT32_MIN, le=INT32_MAX)
    coa: CoaMode | None = None  # overrides [coa].mode for this group


class CoaSettings(_Model):
    mode: CoaMode = "off"
    secret: SecretStr | None = None
    secret_file: Path | None = None
    nas_secrets: bool = False  # take per-NAS secrets from FreeRADIUS's nas table
    port: int = Field(3799, ge=1, le=65535)
    timeout: PositiveDuration = 2.0
    retries: int = Field(3, ge=1, le=100)

    def shared_secret(self) -> str | None:
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_file is not None:
            return _read_secret(self.secret_file, "coa.secret_file")
        return None


PoolAttribute = Literal["Framed-IP-Address", "Framed-Route", "Framed-IPv6-Prefix", "Delegated-IPv6-Prefix", "none"]


class PoolSettings(_Selector):
    name: str = Field(min_length=1)
    networks: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    priority: int = 0
    hold: Duration = 86400.0
    # An account of the pool's group the pool has no address for (it is exhausted):
    # "withhold" its RADIUS rows until it has one, or "assign-group" them without one.
    on_exhausted: Literal["withhold", "assign-group"] = "withhold"
    # Issue #24: each allocation an aligned prefix of this length (None: one address).
    prefix_length: int | None = Field(None, ge=1, le=128)
    # How the allocation reaches FreeRADIUS (None: the family's default, see core.ipam).
    radius_attribute: PoolAttribute | None = None

    @field_validator("networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        out = []
        for i, net in enumerate(v):
            try:
                out.append(str(netaddr.IPNetwork(net, flags=netaddr.NOHOST)))
            except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
                raise ValueError(f"networks[{i}]: not a network: {net!r}") from exc
        return out

    def ipset(self) -> netaddr.IPSet:
        return netaddr.IPSet(self.networks)

    def excluded(self) -> netaddr.IPSet:
        out = netaddr.IPSet()
        for item in self.exclude:
            out |= _parse_range(item)
        return out

    @model_validator(mode="after")
    def _exclusions(self) -> PoolSettings:
        pool = self.ipset()
        for i, item in enumerate(self.exclude):
            try:
                ex = _parse_range(item)
            except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
                raise ValueError(f"exclude[{i}]: not an address, network or range: {item!r}") from exc
            if not ex.issubset(pool):
                raise ValueError(f"exclude[{i}]: {item} lies (partly) outside the pool's networks")
        return self

    @model_validator(mode="after")
    def _prefixes(self) -> PoolSettings:
        nets = [netaddr.IPNetwork(n) for n in self.networks]
        versions = sorted({n.version for n in nets})
        if len(versions) > 1:
            raise ValueError("networks: mixes IPv4 and IPv6; make one pool per family")
        version = versions[0]
        bits = 32 if version == 4 else 128
        length = bits if self.prefix_length is None else self.prefix_length
        if length > bits:
            raise ValueError(f"prefix_length: /{length} is longer than an IPv{version} address (/{bits} at most)")
        for i, net in enumerate(nets):
            if net.prefixlen > length:
                raise ValueError(f"prefix_length: /{length} is shorter than networks[{i}] {net}: "
                                 f"no /{length} fits in it")
        attr = self.radius_attribute
        if attr in ("Framed-IPv6-Prefix", "Delegated-IPv6-Prefix") and version == 4:
            raise ValueError(f"radius_attribute: {attr} carries an IPv6 prefix; this pool is IPv4")
        if attr in ("Framed-IP-Address", "Framed-Route") and version == 6:
            raise ValueError(f"radius_attribute: {attr} carries IPv4; this pool is IPv6 "
                             "(Framed-IPv6-Prefix or Delegated-IPv6-Prefix)")
        if attr == "Framed-IP-Address" and length == 31:
            raise ValueError(f"radius_attribute: a /{length} block has no host for "
                             "Framed-IP-Address + Framed-IP-Netmask; route it with Framed-Route")
        return self

    def allocations(self) -> int:
        """How many allocations the pool offers once exclusions are taken out (0: none)."""
        usable = self.ipset() - self.excluded()
        bits = 32 if netaddr.IPNetwork(self.networks[0]).version == 4 else 128
        length = bits if self.prefix_length is None else self.prefix_length
        if length == bits:
            for net in self.networks:
                n = netaddr.IPNetwork(net)
                if n.version == 4 and n.prefixlen < 31:
                    usable.remove(n.network)
                    usable.remove(n.broadcast)
            return int(usable.size)
        return sum(1 << (length - c.prefixlen) for c in usable.iter_cidrs() if c.prefixlen <= length)


def _parse_range(text: str) -> netaddr.IPSet:
    if "-" in text:
        start, end = (p.strip() for p in text.split("-", 1))
        return netaddr.IPSet(netaddr.IPRange(start, end))
    return netaddr.IPSet([netaddr.IPNetwork(text.strip())])


class DaemonSettings(_Model):
    interval: PositiveDuration = 60.0
    jitter: Duration = 5.0
    dry_run: bool = False
    notify_channel: str | None = None
    debounce: Duration = 1.0  # the Sonar webhook's window for full-pass events (NOTIFYs: none)
    scope_max_accounts: int = Field(default=500, ge=0)
    # A mirror of every router kept by ``listen``: scoped passes print nothing, drift is
    # repaired as it is heard, and full passes become a backstop (``interval`` when set,
    # else adaptive). false: every pass reads the routers, as before.
    listen: bool = True
    metrics_listen: str | None = None
    healthz_max_age: PositiveDuration | None = None  # default: three full-pass intervals
    log_format: Literal["text", "json"] = "text"
    retry_max: Duration = 600.0  # back-off ceiling for a failing target
    webhook_listen: str | None = None  # Sonar webhooks: HOST:PORT serving /webhooks/sonar
    webhook_token_file: Path | None = None  # the secret in the webhook URL's ?token=
    # Several daemons on one PostgreSQL state store: "standby" (one leads through an
    # advisory lock, the others wait) or "shared" (every daemon active; each router, and
    # the global work, written by the member holding its claim: ``daemon.members``).
    members: Literal["standby", "shared"] = "standby"
    member_id: str | None = Field(default=None, min_length=1, max_length=200)  # default: the host name
    member_ttl: PositiveDuration = Field(default=10.0, ge=1.0, le=600.0)

    @property
    def member_margin(self) -> float:
        """How long before its lease runs out on the database a member stops writing."""
        return self.member_ttl / 5

    @model_validator(mode="after")
    def _webhook(self) -> DaemonSettings:
        if self.webhook_listen is not None and self.webhook_token_file is None:
            raise ValueError("webhook_token_file: required with webhook_listen (the secret "
                             "Sonar sends in the URL's ?token=)")
        return self

    def webhook_token(self) -> str:
        assert self.webhook_token_file is not None
        return _read_token(self.webhook_token_file, "daemon.webhook_token_file")


_config_path: ContextVar[Path | None] = ContextVar("provisiond_config_path", default=None)

LIST_SECTIONS = ("router", "address_list", "radius_group", "pool")
_ITEM_ENV = re.compile(r"^PROVISIOND_(ROUTER|ADDRESS_LIST|RADIUS_GROUP|POOL)__([A-Z0-9_]+?)__([A-Z0-9_]+)$")


class _WithoutItemOverrides(PydanticBaseSettingsSource):
    """The environment source, minus per-item overrides of [[list]] sections."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self._inner()
        for section in LIST_SECTIONS:
            if isinstance(data.get(section), dict):
                del data[section]
        return data


def _env_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def apply_item_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Merge ``PROVISIOND_<SECTION>__<NAME or INDEX>__<KEY>`` into the file's [[lists]].

    ``PROVISIOND_ROUTER__CORE_1__PASSWORD`` sets ``password`` of the router named
    ``core-1`` (name upper-cased, other characters as ``_``); ``PROVISIOND_POOL__0__HOLD``
    the first pool's ``hold``. Returns problems for overrides that match no item.
    """
    problems = []
    for var, value in sorted(environ.items()):
        m = _ITEM_ENV.match(var.upper())
        if not m:
            continue
        section, which, key = m.group(1).lower(), m.group(2), m.group(3).lower()
        items = data.setdefault(section, [])
        if not isinstance(items, list):
            continue
        if which.isdigit():
            index: int | None = int(which) if int(which) < len(items) else None
        else:
            index = next((i for i, item in enumerate(items)
                          if isinstance(item, dict) and _env_key(str(item.get("name", ""))) == which), None)
        if index is None:
            problems.append(f"{var}: no {section} {which.lower()!r} to override")
            continue
        item = items[index]
        if value == "":
            item.pop(key, None)
            continue
        item[key] = value
        # A secret from the environment replaces the file's way of giving it.
        for a, b in (("password", "password_file"), ("password_file", "password")):
            if key == a:
                item.pop(b, None)
    return problems


class Settings(BaseSettings):
    """The whole configuration. Build it with ``load``."""

    model_config = SettingsConfigDict(
        env_prefix="PROVISIOND_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    marker: str = Field("provisiond", pattern=r"^[A-Za-z0-9_.-]+$")
    source: SourceSettings
    state: StateSettings = StateSettings()
    router: list[RouterSettings] = Field(default_factory=list)
    address_list: list[AddressListMapping] = Field(default_factory=list)
    safety: SafetySettings = SafetySettings()
    radius: RadiusSettings | None = None
    radius_group: list[RadiusGroupMapping] = Field(default_factory=list)
    coa: CoaSettings = CoaSettings()
    pool: list[PoolSettings] = Field(default_factory=list)
    daemon: DaemonSettings = DaemonSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        # Overrides of one element of a [[list]] (PROVISIOND_ROUTER__CORE_1__PASSWORD)
        # are merged into the file's data by ``load``; here they must not replace the list.
        return (_WithoutItemOverrides(env_settings), init_settings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems = list(_cross_problems(self))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def flags_used(self) -> dict[str, str]:
        """Account flag -> the first mapping key that selects on it (``address_list[0].delinquent``):
        the flag columns an SQL source's query must return."""
        out: dict[str, str] = {}
        for section in ("address_list", "radius_group", "pool"):
            for i, m in enumerate(getattr(self, section)):
                for flag in ("active", "delinquent"):
                    if getattr(m, flag) is not None:
                        out.setdefault(flag, f"{section}[{i}].{flag}")
        return out

    def routers_for(self, mapping: AddressListMapping) -> list[RouterSettings]:
        return [r for r in self.router if any(fnmatch.fnmatchcase(r.name, p) for p in mapping.routers)]


def _cross_problems(s: Settings) -> Iterator[str]:
    seen: dict[str, int] = {}
    for i, r in enumerate(s.router):
        if r.name in seen:
            yield f"router[{i}].name: duplicate router name {r.name!r} (also router[{seen[r.name]}])"
        seen.setdefault(r.name, i)
    for i, m in enumerate(s.address_list):
        for j, pattern in enumerate(m.routers):
            if not any(fnmatch.fnmatchcase(r.name, pattern) for r in s.router):
                yield f"address_list[{i}].routers[{j}]: {pattern!r} matches no [[router]]"
    if s.radius_group and s.radius is None:
        yield "radius_group: [[radius_group]] mappings need a [radius] section with url"
    if s.daemon.notify_channel is not None and s.source.type == "sonar":
        yield ("daemon.notify_channel: LISTEN/NOTIFY needs billing on PostgreSQL (source.type "
               "= \"sql\"); Sonar tells provisiond of changes by webhook: remove notify_channel "
               "and set daemon.webhook_listen and daemon.webhook_token_file")
    if s.daemon.members == "shared":
        if not s.state.url.get_secret_value().startswith("postgresql"):
            yield ("daemon.members: \"shared\" needs a PostgreSQL state store (state.url = "
                   "\"postgresql://...\"); every member claims its routers there")
        for i, r in enumerate(s.router):
            if r.name == "global":
                yield (f"router[{i}].name: {r.name!r} is the claim name of the global work with "
                       "daemon.members = \"shared\"; rename the router")
    names: dict[str, int] = {}
    for i, p in enumerate(s.pool):
        if p.name in names:
            yield f"pool[{i}].name: duplicate pool name {p.name!r} (also pool[{names[p.name]}])"
        names.setdefault(p.name, i)
        if p.allocations() == 0:
            what = "address" if p.prefix_length is None else f"/{p.prefix_length}"
            yield f"pool[{i}]: pool {p.name!r} has no usable {what}"
    for i, a in enumerate(s.pool):
        for j in range(i + 1, len(s.pool)):
            b = s.pool[j]
            if a.ipset() & b.ipset():
                yield f"pool[{j}].networks: pool {b.name!r} overlaps pool {a.name!r} (pool[{i}])"


def format_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


_SUBPATH = re.compile(r"^[a-z_]+(\[\d+\])*: ")


def _problems_from(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        where = format_loc(loc)
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(loc)
        elif err["type"] == "missing":
            msg = "required key is missing"
        for line in msg.split("\n"):
            if not where:
                problems.append(line)
            elif _SUBPATH.match(line):
                problems.append(f"{where}.{line}")
            else:
                problems.append(f"{where}: {line}")
    return problems


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class a key path points into (``["router", 0, "pasword"]`` -> RouterSettings)."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        found = _model_in(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(loc: Sequence[int | str]) -> str:
    if not loc or not isinstance(loc[-1], str):
        return ""
    model = _model_at(loc)
    if model is None:
        return ""
    close = difflib.get_close_matches(loc[-1].lower(), list(model.model_fields), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("PROVISIOND_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc


def load(path: Path) -> Settings:
    """Read and validate the config file plus environment overrides."""
    data = read_toml(path)
    item_problems = apply_item_overrides(data, os.environ)
    if item_problems:
        raise ConfigError(item_problems)
    token = _config_path.set(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems_from(exc)) from None
    finally:
        _config_path.reset(token)


def warnings(path: Path, settings: Settings) -> list[str]:
    """Problems that do not stop provisiond but that an operator should fix."""
    out = []
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    inline = [f"router[{i}].password" for i, r in enumerate(settings.router) if r.password is not None]
    if settings.coa.secret is not None:
        inline.append("coa.secret")
    if settings.source.token is not None:
        inline.append("source.token")
    if settings.source.url.get_secret_value().count("@") and _url_has_password(
        settings.source.url.get_secret_value()
    ):
        inline.append("source.url (password in the URL)")
    if inline and mode & (stat.S_IROTH | stat.S_IRGRP):
        out.append(
            f"{path} is readable by group/others and holds secrets inline: {', '.join(inline)}; "
            "use password_file / secret_file / token_file (systemd LoadCredential=) or chmod 600"
        )
    for i, r in enumerate(settings.router):
        if not r.tls:
            out.append(
                f"router[{i}] ({r.name}): plain API on port {r.api_port}: the password crosses "
                "the network in clear text; prefer tls = true (API-SSL)"
            )
        elif not r.tls_verify and r.fingerprint is None:
            out.append(f"router[{i}] ({r.name}): tls_verify = false without a fingerprint accepts any certificate")
    return out


def _url_has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:  # noqa: BLE001 - a malformed URL is reported elsewhere
        return False
