"""Settings from the environment, read and validated once per process.

Precedence: command-line flag > environment > default. A missing or malformed value raises
:class:`SettingsError` naming the variable; the CLI prints that one line and exits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_WHOLE = re.compile(r"[0-9]{1,12}")
_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_PROVIDER_VAR = re.compile(r"^PAXYO_PROVIDER_([A-Z0-9_]+)_(URL|KEY)$")


@dataclass(frozen=True)
class ProviderConfig:
    """Where and how to reach one provider; ``name`` is its lowercase id."""

    name: str
    url: str
    key: str = field(repr=False)


class SettingsError(Exception):
    """A setting is missing or malformed; ``str()`` is the one line to print."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    """Everything a Paxyo process is configured with. Defaults are documented in design.md."""

    database_url: str = field(default_factory=lambda: f"sqlite:///{Path.cwd() / 'paxyo.db'}")
    redis_url: str = "redis://localhost:6379/0"
    port: int = 8080
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    poll_interval: float = 30.0
    jwt_secret: str | None = None
    admin_token: str | None = None
    money_decimals: int = 2
    currency: str = "USD"
    provider_timeout: float = 20.0
    provider_attempts: int = 4
    provider_rate_limit_per_min: int = 600
    shards_per_job: int = 4  # provider calls one worker process has in flight at once
    lease_seconds: float | None = None  # None: derived from the poll interval and job timeout
    redis_prefix: str = "paxyo"
    queue_name: str = "paxyo"
    history_size: int = 100
    history_ttl: float = 86400.0
    allowed_origins: tuple[str, ...] = ()
    log_format: str = "text"
    metrics_port: int | None = None  # worker/dispatcher: also serve own metrics on this port
    webhook_url: str | None = field(default=None, repr=False)  # may hold a password
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout: float = 10.0
    demo: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); flags come as overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "DATABASE_URL" in env:
            values["database_url"] = _database_url(env["DATABASE_URL"])
        if "REDIS_URL" in env:
            values["redis_url"] = _url("REDIS_URL", env["REDIS_URL"], ("redis", "rediss", "unix"))
        _number(env, values, "PORT", "port", int, 0, 65535)
        _number(env, values, "PAXYO_POLL_INTERVAL", "poll_interval", float, 1, 3600)
        _number(env, values, "PAXYO_MONEY_DECIMALS", "money_decimals", int, 0, 8)
        _number(env, values, "PAXYO_PROVIDER_TIMEOUT", "provider_timeout", float, 0.1, 300)
        _number(env, values, "PAXYO_PROVIDER_ATTEMPTS", "provider_attempts", int, 1, 20)
        _number(env, values, "PAXYO_PROVIDER_RATE_LIMIT", "provider_rate_limit_per_min",
                int, 1, 1_000_000)
        _number(env, values, "PAXYO_SHARDS_PER_JOB", "shards_per_job", int, 1, 20)
        _number(env, values, "PAXYO_LEASE_SECONDS", "lease_seconds", float, 1, 86400)
        _number(env, values, "PAXYO_HISTORY_SIZE", "history_size", int, 1, 100_000)
        _number(env, values, "PAXYO_HISTORY_TTL", "history_ttl", float, 1, 30 * 86400)
        _number(env, values, "PAXYO_METRICS_PORT", "metrics_port", int, 1, 65535)
        _number(env, values, "PAXYO_WEBHOOK_TIMEOUT", "webhook_timeout", float, 0.5, 60)
        for var, key in (("PAXYO_JWT_SECRET", "jwt_secret"), ("PAXYO_ADMIN_TOKEN", "admin_token"),
                         ("PAXYO_CURRENCY", "currency"), ("PAXYO_REDIS_PREFIX", "redis_prefix"),
                         ("PAXYO_QUEUE", "queue_name")):
            if var in env:
                if not env[var].strip():
                    raise SettingsError(var, "is set but empty")
                values[key] = env[var].strip()
        if "PAXYO_ALLOWED_ORIGINS" in env:
            values["allowed_origins"] = tuple(
                o.strip().rstrip("/") for o in env["PAXYO_ALLOWED_ORIGINS"].split(",") if o.strip())
        if "PAXYO_LOG_FORMAT" in env:
            fmt = env["PAXYO_LOG_FORMAT"].strip().lower()
            if fmt not in ("text", "json"):
                raise SettingsError("PAXYO_LOG_FORMAT", f"must be text or json, not {fmt!r}")
            values["log_format"] = fmt
        _webhook(env, values)
        if "PAXYO_DEMO" in env:
            values["demo"] = env["PAXYO_DEMO"].strip().lower() in ("1", "true", "yes")
        values["providers"] = _providers(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def webhooks_enabled(self) -> bool:
        """Events are queued for webhook delivery (PAXYO_WEBHOOK_URL is set)."""
        return self.webhook_url is not None

    @property
    def webhook_url_label(self) -> str | None:
        """PAXYO_WEBHOOK_URL for messages: a password or query in it (a secret) shown as ***."""
        return None if self.webhook_url is None else url_label(self.webhook_url)

    def with_overrides(self, **overrides: object) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def require_secrets(self) -> None:
        """Processes that face clients need both secrets, except in demo mode."""
        if self.demo:
            return
        if not self.jwt_secret:
            raise SettingsError("PAXYO_JWT_SECRET", "is required (HS256 key for WebSocket tokens)")
        if not self.admin_token:
            raise SettingsError("PAXYO_ADMIN_TOKEN", "is required (bearer token for /v1)")

    def require_providers(self) -> None:
        if not self.providers:
            raise SettingsError(
                "PAXYO_PROVIDER_<NAME>_URL", "no provider configured (set _URL and _KEY)")


def _number(env: Mapping[str, str], values: dict[str, object], var: str, key: str,
            kind: type, low: float, high: float) -> None:
    if var not in env:
        return
    raw = env[var].strip()
    # ASCII digits only: int() and float() would also take "٣", "1_000", "1e3" and "nan"
    pattern = _WHOLE if kind is int else _DECIMAL
    if not pattern.fullmatch(raw):
        raise SettingsError(var, f"must be a {'whole ' if kind is int else ''}number, "
                                 f"not {raw!r}")
    value = kind(raw)
    if not low <= value <= high:
        raise SettingsError(var, f"must be between {low:g} and {high:g}, not {raw}")
    values[key] = value


def url_label(url: str) -> str:
    """``url`` without its password, query or fragment (each may hold a secret)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + ("?***" if parts.query else "")


def _webhook(env: Mapping[str, str], values: dict[str, object]) -> None:
    url = env.get("PAXYO_WEBHOOK_URL", "").strip()
    secret = env.get("PAXYO_WEBHOOK_SECRET", "").strip()
    if not url:
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (a port out of range raises here)
        if host is not None:
            host.encode("idna")  # an empty or too long label raises (UnicodeError)
    except ValueError:
        host = None
    if (host is None or parts.scheme not in ("http", "https")
            or any(ord(c) < 33 or ord(c) == 127 for c in url)):
        raise SettingsError("PAXYO_WEBHOOK_URL", f"must be an http or https URL, not {url!r}")
    if not secret:
        raise SettingsError("PAXYO_WEBHOOK_SECRET",
                            "is required when PAXYO_WEBHOOK_URL is set (the HMAC key)")
    values["webhook_url"] = url
    values["webhook_secret"] = secret


def _url(var: str, raw: str, schemes: tuple[str, ...]) -> str:
    raw = raw.strip()
    scheme = urlsplit(raw).scheme.split("+")[0]
    if scheme not in schemes:
        raise SettingsError(var, f"must be a {'/'.join(schemes)} URL, not {raw!r}")
    return raw


def _database_url(raw: str) -> str:
    url = _url("DATABASE_URL", raw, ("sqlite", "postgresql", "postgres", "mysql", "mariadb"))
    # Heroku hands out postgres:// URLs; SQLAlchemy wants an explicit dialect and driver.
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url[len("postgres://"):]
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    elif url.startswith(("mysql://", "mariadb://")):
        url = "mysql+pymysql://" + url.split("://", 1)[1]
    return url


def _providers(env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    found: dict[str, dict[str, str]] = {}
    for var, value in env.items():
        match = _PROVIDER_VAR.match(var)
        if match:
            found.setdefault(match.group(1), {})[match.group(2)] = value.strip()
    providers: dict[str, ProviderConfig] = {}
    for name, parts in sorted(found.items()):
        for part in ("URL", "KEY"):
            if not parts.get(part):
                raise SettingsError(f"PAXYO_PROVIDER_{name}_{part}", "is missing or empty")
        url = _url(f"PAXYO_PROVIDER_{name}_URL", parts["URL"], ("http", "https"))
        providers[name.lower()] = ProviderConfig(name=name.lower(), url=url, key=parts["KEY"])
    return providers
