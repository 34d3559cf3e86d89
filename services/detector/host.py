"""Plugin host: discovery, version checks, validation, CPU budgets, disabling and recovery.

pluggy does not isolate plugins (one raising implementation aborts a hook call), so the
host calls every implementation itself: each call has its own try/except and CPU-time budget.
:class:`PluginHost` calls plugins in this process (the backtester, the plugin author's harness
with ``isolate=False``, ``spx plugins --offline``); :class:`services.detector.isolation.IsolatedHost`
runs each plugin package in a supervised worker process with the same loading, validation and
health rules (the detector service's default). A plugin's health (errors, overruns, disabling,
half-open retries) is :class:`~services.detector.health.PluginHealth`. Outputs are normalized
(:func:`normalize`) and validated (:func:`validate_output`) the same way on both paths, so a
plugin gives the same candidates in process and isolated.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import msgspec
import pluggy
from pydantic import ValidationError
import inspect

from services.detector import hookspecs
from services.detector.health import PluginHealth, probe_backoff
from services.detector.lifecycle import geometry_ok
from spx_common.errors import Fatal
from spx_common import schemas
from spx_common.models import SetupCandidate

ENTRY_POINT_GROUP = "spx.detectors"
MAX_CANDIDATES = 20  # a plugin's output is read up to this many items per bar
NOT_A_LIST = "not_a_list"  # normalize(): the plugin returned something other than a list
# Bounds on each field of a candidate, checked before anything is published (candidate_out_of_range):
MAX_TS_SKEW_NS = 86_400 * 10**9  # ts within a day of the bar's event time (and so within int64)
MAX_PRICE = 1e7  # |entry|, |stop|, |target| (finite is checked first: candidate_not_finite)
MAX_TARGETS = 8
MAX_EVIDENCE = 32  # evidence entries
MAX_TEXT = 256  # characters of an evidence key or string value
MAX_NAME = 64  # characters of detector, family, sym
INT64 = (-(2**63), 2**63 - 1)


class PluginError(Fatal, RuntimeError):
    pass


@dataclass(frozen=True)
class Limits:
    """A plugin's budgets (``[detector] budget_ms`` etc., overridden per plugin by ``plugin_limits``).

    ``cpu_ms``: CPU time per call; more is an overrun (counted; ``max_slow`` of them disable it).
    ``stop_ms``: CPU time at which an isolated call is interrupted (an overrun and an error).
    ``hang_ms``: wall time an isolated call may take before its worker is killed (a crash).
    ``mem_mb``: the data-segment limit of the plugin package's worker process.
    """

    cpu_ms: float = 20.0
    stop_ms: float = 250.0
    hang_ms: float = 2000.0
    mem_mb: int = 512

    def override(self, doc: dict | None) -> Limits:
        if not doc:
            return self
        known = {k: v for k, v in doc.items() if k in ("cpu_ms", "stop_ms", "hang_ms", "mem_mb")}
        return Limits(**{**self.__dict__, **known})


@dataclass
class LoadedPlugin:
    name: str
    family: str
    version: str
    source: str
    impl: Any
    on_bar: Callable | None
    symbols: list[str] | None = None
    health: PluginHealth = field(default_factory=PluginHealth)
    limits: Limits = field(default_factory=Limits)
    refused: int = 0
    invoke: Callable | None = None  # on_bar called with only the arguments it declares
    worker: str = ""  # the isolated worker (plugin package) that runs it; "" in process
    remote: bool = False  # isolated: its worker reported an on_bar hook

    @property
    def status(self) -> str:
        return self.health.status

    @property
    def errors(self) -> int:
        return self.health.errors

    def wants(self, sym: str) -> bool:
        return (self.on_bar is not None or self.remote) and (not self.symbols or sym in self.symbols)


@dataclass
class HostEvents:
    """What the host wants published: status changes and refusals (drained by the service)."""

    status: list[dict] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def make_manager() -> pluggy.PluginManager:
    """A fresh plugin manager (no import-time global)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


#: said loudly (log, heartbeat, 'spx status', 'spx up', 'spx plugins') when no detector is loaded
NO_PLUGINS_WARNING = ("no detector plugin loaded: the detector runs with zero detectors and will never report a "
                      "setup. Install the built-in detectors (pip install -e plugins/spx_builtin_detectors; "
                      "scripts/install.sh does) or check [detector] entry_points_enabled / plugins")


class HostBase:
    """What both hosts share: plugin table, health accounting, validation, refusals, description."""

    def __init__(self, *, max_failures: int = 3, budget_ms: float = 20.0, max_slow: int = 5,
                 retry_s: float = 30.0, retry_max_s: float = 1800.0, limits: dict[str, dict] | None = None,
                 defaults: Limits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.plugins: dict[str, LoadedPlugin] = {}
        self.max_failures = max_failures
        self.budget_ms = budget_ms
        self.max_slow = max_slow
        self.backoff = probe_backoff(retry_s, retry_max_s)
        self.defaults = defaults or Limits(cpu_ms=budget_ms)
        self.per_plugin = dict(limits or {})
        self.clock = clock
        self.events = HostEvents()
        self.load_errors: list[str] = []
        #: installed entry points not enabled by configuration ("name (module)"): listed, never run
        self.available: list[str] = []

    def _new_health(self) -> PluginHealth:
        return PluginHealth(max_failures=self.max_failures, max_slow=self.max_slow, backoff=self.backoff)

    def limits_of(self, name: str) -> Limits:
        return self.defaults.override(self.per_plugin.get(name))

    def _account(self, p: LoadedPlugin, now: float, *, error: str = "", slow: str = "", crash: str = "",
                 call: bool = True) -> None:
        was = p.health.status
        why = p.health.record(now, error=error, slow=slow, crash=crash, call=call)
        if why is not None:
            self.events.status.append({"plugin": p.name, "status": "disabled", "reason": why,
                                       "retry_in_s": round(p.health.retry_at - now, 1)})
        elif was == "probing" and p.health.status == "active":
            self.events.status.append({"plugin": p.name, "status": "active", "reason": "probe call succeeded"})

    def _overrun(self, p: LoadedPlugin, cpu_ms: float) -> str:
        return f"used {cpu_ms:.1f} ms of CPU (budget {p.limits.cpu_ms:g} ms)" if cpu_ms > p.limits.cpu_ms else ""

    def _validate(self, p: LoadedPlugin, out: Any, bar) -> list[SetupCandidate]:
        return validate_output(p.name, p.family, out, bar, lambda reason, detail="": self._refuse(p, reason, detail))

    def _refuse(self, p: LoadedPlugin, reason: str, detail: str = "") -> None:
        p.refused += 1
        self.events.refused.append((reason, f"{p.name}: {detail}" if detail else p.name))

    def describe(self) -> list[dict]:
        now = self.clock()
        return [{"name": p.name, "family": p.family, "version": p.version, "source": p.source,
                 "refused": p.refused, "worker": p.worker, "cpu_budget_ms": p.limits.cpu_ms,
                 **p.health.describe(now)} for p in self.plugins.values()]


class PluginHost(HostBase):
    """Plugins called in this process: no preemption (a call that never returns wedges the caller),
    the CPU time of each call measured and budgeted as in the isolated host."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pm = make_manager()
        self._wanting: dict[str, tuple[LoadedPlugin, ...]] = {}
        self._wanting_n = 0  # len(plugins) when the memo was built

    # ------------------------------------------------------------------ loading

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, enabled: list[str] | None = None,
                          only: str | None = None) -> None:
        """Register the plugins of ``group``'s entry points named in ``enabled`` (None or ``"*"``: all);
        the others are only remembered in :attr:`available`. ``only``: that entry point alone (a worker)."""
        for ep in importlib.metadata.entry_points(group=group):
            if only is not None and ep.name != only:
                continue
            if enabled is not None and "*" not in enabled and ep.name not in enabled:
                self.available.append(f"{ep.name} ({ep.value})")
                continue
            try:
                self.register(ep.load(), source=f"entry point {ep.name} ({ep.value})")
            except Exception as exc:
                self.load_errors.append(f"{ep.name}: {exc}")

    def load_module(self, dotted: str) -> None:
        try:
            module = importlib.import_module(dotted)
        except Exception as exc:
            self.load_errors.append(f"{dotted}: cannot import: {exc!r}")
            return
        try:
            self.register(module, source=f"config {dotted}")
        except PluginError as exc:
            self.load_errors.append(str(exc))

    def register(self, obj: Any, source: str) -> LoadedPlugin | None:
        """Register a plugin object/module; refuse bad descriptions and API versions clearly."""
        subs = getattr(obj, "DETECTORS", None)
        if subs is not None:  # a package exposing several detector modules
            for sub in subs:
                try:
                    self.register(sub, source)
                except PluginError as exc:
                    self.load_errors.append(str(exc))
            return None
        describe = getattr(obj, "spx_detector_describe", None)
        if describe is None:
            raise PluginError(f"{source}: no spx_detector_describe hook")
        try:
            desc = describe()
        except Exception as exc:
            raise PluginError(f"{source}: spx_detector_describe raised {exc!r}") from exc
        if not isinstance(desc, dict) or not desc.get("name") or not desc.get("family"):
            raise PluginError(f"{source}: describe() must return a map with 'name' and 'family'")
        api = desc.get("api_version")
        if api != hookspecs.API_VERSION:
            raise PluginError(f"{source}: plugin {desc['name']!r} targets detector API {api!r}; this host speaks "
                              f"API {hookspecs.API_VERSION} — upgrade the plugin or the host")
        name = str(desc["name"])
        if name in self.plugins:
            raise PluginError(f"{source}: a plugin named {name!r} is already loaded "
                              f"({self.plugins[name].source})")
        self.pm.register(obj, name=name)
        self.pm.check_pending()
        symbols = desc.get("symbols")
        plugin = LoadedPlugin(name=name, family=str(desc["family"]), version=str(desc.get("version", "0")),
                              source=source, impl=obj, on_bar=getattr(obj, "spx_detector_on_bar", None),
                              symbols=[str(x) for x in symbols] if isinstance(symbols, (list, tuple)) else None,
                              health=self._new_health(), limits=self.limits_of(name))
        if plugin.on_bar is not None:
            plugin.invoke = _invoker(plugin.on_bar)
        self.plugins[name] = plugin
        self._wanting.clear()
        return plugin

    # ------------------------------------------------------------------ calling

    def on_bar(self, ctx, bar, only=None) -> list[SetupCandidate]:
        """Each active plugin's candidates for ``bar``; ``only``: run just the plugins with these names.

        The per-bar path of every backtest and of ``isolation = "inline"``, so it is lean: the plugins that
        want the symbol are resolved once per symbol (:meth:`wanting`); the thread's CPU clock is read once
        between two calls (a call's CPU time is the clock's advance over it and over the few attribute
        updates after the previous call: a fraction of a microsecond, against budgets in milliseconds),
        again after validating a candidate; a clean call of an active plugin (no error, within its budget)
        is counted without the full health accounting."""
        out: list[SetupCandidate] = []
        now = self.clock()
        cpu = time.thread_time
        t0 = cpu()
        for p in self.wanting(bar.sym):
            h = p.health
            if h.status != "active" and not h.should_call(now):
                continue
            if only is not None and p.name not in only:
                continue
            try:
                result, error = p.invoke(ctx, bar), ""  # type: ignore[misc]  # wanting(): invoke is set
            except Exception as exc:
                result, error = None, repr(exc)[:300]
            t1 = cpu()
            cpu_ms = (t1 - t0) * 1000
            t0 = t1
            if error or cpu_ms > p.limits.cpu_ms or h.status != "active":
                self._account(p, now, error=error, slow=self._overrun(p, cpu_ms))
            else:
                h.calls += 1  # all PluginHealth.record does for a clean call of an active plugin
            if not error and result is not None:
                out.extend(self._validate(p, normalize(result), bar))
                t0 = cpu()
        return out

    def wanting(self, sym: str) -> tuple[LoadedPlugin, ...]:
        """The plugins with an ``on_bar`` hook that want ``sym``, in load order (memoised per symbol; the
        memo is rebuilt when a plugin is registered or removed from :attr:`plugins`)."""
        memo = self._wanting
        if self._wanting_n != len(self.plugins):
            memo.clear()
            self._wanting_n = len(self.plugins)
        hit = memo.get(sym)
        if hit is None:
            hit = memo[sym] = tuple(p for p in self.plugins.values() if p.wants(sym))
        return hit


def normalize(result: Any) -> Any:
    """A plugin's return value as plain data: ``None``, :data:`NOT_A_LIST`, or up to
    :data:`MAX_CANDIDATES` items, each a map (a ``SetupCandidate`` becomes its map) or ``None`` for
    an item that is not a map, or ``{"__unencodable__": why}`` for a map the wire cannot carry.
    The isolated worker sends exactly this; the in-process host validates exactly this."""
    if result is None:
        return None
    if not isinstance(result, (list, tuple)):
        return NOT_A_LIST
    out: list[Any] = []
    for item in result[:MAX_CANDIDATES]:
        if isinstance(item, SetupCandidate):
            item = item.to_dict()
        if not isinstance(item, dict):
            out.append(None)
            continue
        try:
            msgspec.msgpack.encode(item)
        except Exception as exc:  # an object, a set, an int beyond 64 bits: it could never be published
            item = {"__unencodable__": f"{type(exc).__name__}: {exc}"[:200]}
        out.append(item)
    return out


def validate_output(name: str, family: str, out: Any, bar, refuse: Callable[..., None]) -> list[SetupCandidate]:
    """Candidates from a normalized output; every item refused is refused with a reason."""
    if out is None:
        return []
    if out == NOT_A_LIST or not isinstance(out, list):
        refuse("plugin_output_not_a_list")
        return []
    accepted = []
    for item in out:
        if not isinstance(item, dict):
            refuse("candidate_not_a_map")
            continue
        if "__unencodable__" in item:
            refuse("candidate_invalid", f"not encodable: {item['__unencodable__']}")
            continue
        data = {"detector": name, "family": family, "sym": bar.sym, "ts": bar.start_ns, **item}
        try:
            cand = schemas.validate(SetupCandidate, data)
        except (ValidationError, Exception) as exc:
            refuse("candidate_invalid", str(exc).splitlines()[0])
            continue
        if not all(math.isfinite(x) for x in (cand.entry_low, cand.entry_high, cand.stop, *cand.targets)):
            refuse("candidate_not_finite", "entry, stop and targets must be finite numbers")
            continue
        bound = _out_of_range(cand, bar.start_ns)
        if bound:
            refuse("candidate_out_of_range", bound)
            continue
        if not geometry_ok(cand):
            refuse("candidate_geometry", "stop/targets on the wrong side of the entry zone")
            continue
        accepted.append(cand)
    return accepted


def _out_of_range(c: SetupCandidate, event_ns: int) -> str:
    """Why a schema-valid candidate is still outside the bounds publishing needs, or ``""``."""
    if abs(c.ts - event_ns) > MAX_TS_SKEW_NS:
        return f"ts {c.ts} is more than a day from the bar's event time {event_ns}"
    if any(abs(x) > MAX_PRICE for x in (c.entry_low, c.entry_high, c.stop, *c.targets)):
        return f"a price beyond +-{MAX_PRICE:g}"
    if len(c.targets) > MAX_TARGETS:
        return f"{len(c.targets)} targets (at most {MAX_TARGETS})"
    if max(len(c.detector), len(c.family), len(c.sym)) > MAX_NAME:
        return f"detector, family or sym longer than {MAX_NAME} characters"
    if len(c.evidence) > MAX_EVIDENCE:
        return f"{len(c.evidence)} evidence entries (at most {MAX_EVIDENCE})"
    for key, value in c.evidence.items():
        if len(key) > MAX_TEXT or (isinstance(value, str) and len(value) > MAX_TEXT):
            return f"evidence key or text longer than {MAX_TEXT} characters"
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            return f"evidence {key[:40]!r} beyond int64"
    return ""


_ACCEPTS: dict[Callable, frozenset | None] = {}


def _invoker(fn: Callable) -> Callable:
    """``f(ctx, bar)`` calling ``fn`` with the keyword arguments it declares (resolved once, at load)."""

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return lambda ctx, bar: _call(fn, ctx=ctx, bar=bar)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()) or {"ctx", "bar"} <= set(params):
        return lambda ctx, bar: fn(ctx=ctx, bar=bar)
    if "ctx" in params:
        return lambda ctx, bar: fn(ctx=ctx)
    if "bar" in params:
        return lambda ctx, bar: fn(bar=bar)
    return lambda ctx, bar: fn()


def _call(fn: Callable, **kwargs: Any) -> Any:
    """Call a hook implementation with only the arguments it declares (keyword-only contract)."""
    accepts = _ACCEPTS.get(fn, False)
    if accepts is False:

        params = inspect.signature(fn).parameters
        accepts = _ACCEPTS[fn] = (None if any(p.kind is p.VAR_KEYWORD for p in params.values())
                                  else frozenset(params))
    if accepts is None:
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in accepts})

