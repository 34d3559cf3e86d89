"""One way to configure every process: typed, frozen, validated once at start.

Every process reads the same sources, later ones winning:

1. the field defaults documented on each section model below (and in ``docs/config.md``);
2. an optional TOML file, ``$SPX_CONFIG`` or ``<project>/spx.toml``, one ``[section]`` per model;
3. environment variables ``SPX_<SECTION>_<KEY>`` (e.g. ``SPX_BUS_HWM=200000``), plus the vendor
   names a field declares in ``env`` (e.g. ``MASSIVE_API_KEY``, ``TRADIER_EXECUTION_ENABLED``).

A service defines its own section as a subclass of :class:`Section` in its own package and
loads it with :func:`load`.  A bad value stops the process with a message naming the key and
the source, so supervisord shows the service FATAL instead of running misconfigured.
"""

from __future__ import annotations

import os
import tomllib
import ipaddress
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from spx_common.errors import Fatal

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Every process of the mesh. The index fixes its tcp port offset (see BusConfig).
SERVICES: tuple[str, ...] = (
    "feed",
    "aggregator",
    "detector",
    "selector",
    "broker",
    "coach",
    "gateway",
    "recorder",
)


class ConfigError(Fatal, RuntimeError):
    """Configuration that cannot be accepted; the message names the key and its source."""


class Section(BaseModel):
    """Base of every config section. ``section`` names the TOML table and env prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    section: ClassVar[str] = ""


def env_field(default: Any, description: str, *env: str, **kw: Any) -> Any:
    """A field that may also be set by the given vendor-style environment variable names."""
    return Field(default, description=description, json_schema_extra={"env": list(env)}, **kw)


class RuntimeConfig(Section):
    section: ClassVar[str] = "runtime"

    run_dir: Path = Field(
        PROJECT_DIR / "run",
        description="Directory for sockets, logs, journal, SQLite database and pid files. "
        "Relative paths are taken from the project directory.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum log level.")
    shutdown_grace_s: float = Field(3.0, gt=0, le=60, description="Seconds to drain queues on SIGTERM before exit.")

    def path(self, *parts: str) -> Path:
        p = self.run_dir if self.run_dir.is_absolute() else PROJECT_DIR / self.run_dir
        return p.joinpath(*parts)


class BusConfig(Section):
    section: ClassVar[str] = "bus"

    transport: Literal["ipc", "tcp"] = Field(
        "ipc", description="ipc: unix sockets under run_dir/sock (one host). tcp: for multi-host deployments."
    )
    tcp_bind_host: str = Field("127.0.0.1", description="Interface tcp endpoints bind to.")
    tcp_base_port: int = Field(
        47100,
        ge=1024,
        le=65000,
        description="Service i (order of SERVICES) publishes on base+2i and answers requests on base+2i+1.",
    )
    hosts: dict[str, str] = Field(
        {}, description="tcp only: service or instance name -> host to connect to (default tcp_bind_host)."
    )
    instances: dict[str, list[str]] = Field(
        {},
        description="Sharded services: service -> instance names (e.g. detector = [\"detector-1\", \"detector-2\"]). "
        "Subscribers connect to every instance; instance k of a service uses ports shifted by k*2*len(SERVICES).",
    )
    hwm: int = Field(
        500_000,
        ge=1000,
        description="High-water mark (frames) for PUB send and SUB receive queues. Frames beyond it are dropped "
        "by ZeroMQ and detected by sequence gaps; 1000 (the ZeroMQ default) lost 17-28% of a fast stream.",
    )
    heartbeat_s: float = Field(1.0, gt=0, le=10, description="Heartbeat period of every publisher.")
    peer_timeout_s: float = Field(3.0, gt=0, description="A peer silent this long is reported down.")
    align: bool = Field(True, description="Processes with several input streams (detector, selector, broker, coach) "
                        "release them in event-time order by their publishers' watermarks (docs/protocol.md). Off: in "
                        "arrival order, as fast as they come, and results depend on the publishers' relative speed.")
    align_idle_s: float = Field(10.0, gt=0, le=600, description="An aligned process stops waiting for a publisher "
                                "that sent nothing (no frame, no heartbeat) for this long while its own receive queue "
                                "was empty: the trade-off between order and stalling when a publisher dies (Kafka "
                                "Streams' max.task.idle.ms). A starved host delays heartbeats; keep it well above "
                                "peer_timeout_s.")
    align_max_items: int = Field(200_000, ge=1, description="Items an aligned process holds at most while a stream "
                                 "lags; past it the oldest are released early (counted in align_forced_total).")
    align_max_mb: int = Field(64, ge=1, description="Bytes (MiB) an aligned process holds at most while a stream "
                              "lags; past it the oldest are released early (counted in align_forced_total).")
    rpc_timeout_s: float = Field(2.0, gt=0, description="Default request/reply timeout per attempt.")
    rpc_retries: int = Field(2, ge=0, le=10, description="Default request retries after a timeout.")
    linger_ms: int = Field(200, ge=0, le=5000, description="Socket linger on close (bounded shutdown).")
    curve: bool = Field(
        False, description="Encrypt and authenticate every socket with ZeroMQ CURVE (for tcp across hosts; "
        "keys from 'spx keys generate')."
    )
    curve_dir: Path | None = Field(None, description="CURVE key directory (default <run_dir>/keys).")
    curve_identity: str | None = Field(
        None, description="Key name this process uses (default: its service name, e.g. 'feed')."
    )
    allow_insecure_tcp: bool = Field(
        False, description="tcp without CURVE: every local account can call every request (store a user's "
        "Tradier token, flatten accounts, read orders). Refused at start unless this is true, and then only "
        "with a loopback tcp_bind_host, with a warning. Across hosts use curve = true (docs/deployment.md)."
    )

    def check_transport_security(self) -> str | None:
        """Refuse (ConfigError) an unauthenticated tcp bus unless explicitly allowed on loopback; the
        warning to log when it is allowed, else None. ipc is guarded by the run directory's 0700."""
        if self.transport != "tcp" or self.curve:
            return None
        if not self.allow_insecure_tcp:
            raise ConfigError(
                "[bus] transport = tcp without curve = true: anyone who can reach the ports could store a "
                "user's Tradier token, flatten accounts and read every user's orders. Run 'spx keys generate' "
                "and set curve = true (docs/deployment.md), or set allow_insecure_tcp = true for a loopback test")
        if not _is_loopback(self.tcp_bind_host):
            raise ConfigError(
                f"[bus] allow_insecure_tcp = true is only accepted with a loopback tcp_bind_host, not "
                f"{self.tcp_bind_host!r}: set curve = true to bind a network interface")
        return ("INSECURE BUS: tcp without CURVE (allow_insecure_tcp = true): every local account can send "
                "requests to this process (credentials, flatten, orders); set curve = true")

    def curve_keys_dir(self, runtime: RuntimeConfig) -> Path:
        return self.curve_dir or runtime.path("keys")

    def pub_endpoint(self, service: str, runtime: RuntimeConfig, *, bind: bool = False) -> str:
        return self._endpoint(service, runtime, 0, "pub", bind)

    def rep_endpoint(self, service: str, runtime: RuntimeConfig, *, bind: bool = False) -> str:
        return self._endpoint(service, runtime, 1, "rep", bind)

    def instances_of(self, service: str) -> list[str]:
        """Instance names a subscriber of ``service`` connects to (just the service unless sharded)."""
        return self.instances.get(service) or [service]

    def _endpoint(self, service: str, runtime: RuntimeConfig, offset: int, kind: str, bind: bool) -> str:
        name, _, shard = service.partition("-")
        if self.transport == "ipc":
            return f"ipc://{runtime.path('sock', f'{service}.{kind}')}"
        if name not in SERVICES:
            raise ConfigError(f"unknown service {service!r} for a tcp endpoint")
        k = int(shard) if shard.isdigit() else 0
        port = self.tcp_base_port + 2 * len(SERVICES) * k + 2 * SERVICES.index(name) + offset
        host = self.tcp_bind_host if bind else self.hosts.get(service, self.hosts.get(name, self.tcp_bind_host))
        return f"tcp://{host}:{port}"


class FeedSourceConfig(Section):
    """The ``[feed]`` keys that say where the mesh's data comes from: what every process needs to stamp
    provenance before it hears the feed (:func:`spx_common.provenance.configured`). The feed's whole
    section (``services.feed.config.FeedConfig``) extends it."""

    section: ClassVar[str] = "feed"

    source: Literal["auto", "live", "synthetic", "journal", "flatfile"] = Field(
        "auto", description="auto: live when MASSIVE_API_KEY is set, else the synthetic session. journal/flatfile "
        "replay replay_path.")
    api_key: str = env_field("", "Massive API key (never logged).", "MASSIVE_API_KEY", repr=False)

    def resolved_source(self) -> str:
        if self.source == "auto":
            return "live" if self.api_key else "synthetic"
        return self.source


def _is_loopback(host: str) -> bool:

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_T = TypeVar("_T", bound=Section)


def config_file() -> Path | None:
    explicit = os.environ.get("SPX_CONFIG")
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"SPX_CONFIG={explicit} does not exist")
        return p
    default = PROJECT_DIR / "spx.toml"
    return default if default.is_file() else None


def _read_toml() -> dict[str, Any]:
    path = config_file()
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _env_names(model: type[Section], name: str) -> list[str]:
    info = model.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    env = extra.get("env")
    return [f"SPX_{model.section.upper()}_{name.upper()}", *(str(e) for e in (env if isinstance(env, list) else ()))]


def is_secret(model: type[Section], name: str) -> bool:
    """A field whose value is never printed: declared ``repr=False`` (API keys, tokens, HMAC secrets)."""
    info = model.model_fields.get(name)
    return info is not None and info.repr is False


def shown_value(model: type[Section], name: str, value: Any) -> Any:
    """``value`` as it may be printed: secrets masked (``***`` when set), a URL's password replaced."""
    if is_secret(model, name):
        return "***" if value else value
    if isinstance(value, str) and "://" in value and "@" in value:

        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", value)
    return value


def _read_values(model: type[Section], env: Any) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = dict(_read_toml().get(model.section, {}))
    sources = {k: "config file" for k in values}
    for name in model.model_fields:
        for var in _env_names(model, name):
            if var in env:
                raw = env[var]
                values[name] = _coerce_env(model, name, raw)
                sources[name] = f"environment {var}"
    return values, sources


def sources(model: type[Section], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Where each key of ``model`` comes from: ``default``, ``config file`` or ``environment VAR``."""
    _, src = _read_values(model, os.environ if environ is None else environ)
    return {name: src.get(name, "default") for name in model.model_fields}


def load(model: type[_T], environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None, *,
         part: bool = False) -> _T:
    """Build a section from defaults, the TOML file and the environment; raise ConfigError when invalid.

    The error names each bad key, the value given (secrets masked) and its source, one key a line.
    ``part``: ``model`` declares some keys of its table only (:class:`FeedSourceConfig`): the others are
    left to the section that declares them all."""
    env = os.environ if environ is None else environ
    values, src = _read_values(model, env)
    if part:
        values = {k: v for k, v in values.items() if k in model.model_fields}
    if overrides:
        values.update(overrides)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(x) for x in err["loc"])
            top = str(err["loc"][0]) if err["loc"] else ""
            given = ""
            if top in values:
                given = f" = {shown_value(model, top, values[top])!r}"
            lines.append(f"[{model.section}] {key}{given} ({src.get(top, 'default')}): {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _coerce_env(model: type[Section], name: str, raw: str) -> Any:
    """Environment values are strings; dict/list fields accept JSON or comma-separated values."""
    ann = str(model.model_fields[name].annotation)
    if ann.startswith(("dict", "list", "tuple", "set")) or "dict[" in ann or "list[" in ann:

        raw = raw.strip()
        if raw.startswith(("{", "[")):
            return json.loads(raw)
        if ann.startswith("dict") or "dict[" in ann:
            return dict(item.split("=", 1) for item in raw.split(",") if item)
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def all_sections() -> list[type[Section]]:
    """Every Section subclass imported so far (the config reference walks these); of a section declared by a
    class and its subclass (:class:`FeedSourceConfig`, ``FeedConfig``), the subclass."""
    seen: list[type[Section]] = []
    stack = list(Section.__subclasses__())
    while stack:
        cls = stack.pop(0)
        if cls.section and cls not in seen:
            seen.append(cls)
        stack.extend(cls.__subclasses__())
    seen = [c for c in seen if not any(o is not c and issubclass(o, c) and o.section == c.section for o in seen)]
    return sorted(seen, key=lambda c: c.section)


def reference_markdown(sections: list[type[Section]]) -> str:
    """The configuration reference (docs/config.md is generated from this; a test keeps them equal)."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `spx config docs`; do not edit by hand. Sources, later winning: defaults, the TOML file",
        "(`$SPX_CONFIG` or `spx.toml` in the project directory, one `[section]` per table below), environment.",
        "",
    ]
    for cls in sections:
        out += [f"## [{cls.section}]", "", (cls.__doc__ or "").strip() if cls.__doc__ != Section.__doc__ else "", ""]
        out += ["| key | environment | default | description |", "| --- | --- | --- | --- |"]
        for name, info in cls.model_fields.items():
            default = info.default
            if isinstance(default, Path) and str(default).startswith(str(PROJECT_DIR)):
                default = "<project>/" + str(default.relative_to(PROJECT_DIR))
            envs = ", ".join(f"`{e}`" for e in _env_names(cls, name))
            desc = (info.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {envs} | `{default!r}` | {desc} |")
        out.append("")
    return "\n".join(line for line in out) + "\n"
