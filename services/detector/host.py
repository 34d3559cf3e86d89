"""Plugin host: discovery, version checks, isolation, time budgets, disabling, validation.

pluggy does not isolate plugins (one raising implementation aborts a hook call), so the
host calls every implementation itself: each call has its own try/except and time budget.
A plugin that raises is counted and, after ``max_failures``, disabled; a plugin over its
time budget ``max_slow`` times is disabled too. Candidates are validated with the pydantic
twin of :class:`~spx_common.models.SetupCandidate`; a bad one is refused with a reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy
from pydantic import ValidationError

from services.detector import hookspecs
from spx_common import schemas
from spx_common.models import SetupCandidate

ENTRY_POINT_GROUP = "spx.detectors"


class PluginError(RuntimeError):
    pass


@dataclass
class LoadedPlugin:
    name: str
    family: str
    version: str
    source: str
    impl: Any
    on_bar: Callable | None
    symbols: list[str] | None = None
    status: str = "active"
    errors: int = 0
    slow: int = 0
    calls: int = 0
    last_error: str = ""
    refused: int = 0
    invoke: Callable | None = None  # on_bar called with only the arguments it declares


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


class PluginHost:
    def __init__(self, *, max_failures: int = 3, budget_ms: float = 20.0, max_slow: int = 5) -> None:
        self.pm = make_manager()
        self.plugins: dict[str, LoadedPlugin] = {}
        self.max_failures = max_failures
        self.budget_ms = budget_ms
        self.max_slow = max_slow
        self.events = HostEvents()
        self.load_errors: list[str] = []
        #: installed entry points not enabled by configuration ("name (module)"): listed, never run
        self.available: list[str] = []

    # ------------------------------------------------------------------ loading

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, enabled: list[str] | None = None) -> None:
        """Register the plugins of ``group``'s entry points named in ``enabled`` (None or ``"*"``: all);
        the others are only remembered in :attr:`available`."""
        for ep in importlib.metadata.entry_points(group=group):
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
        plugin = LoadedPlugin(name=name, family=str(desc["family"]), version=str(desc.get("version", "0")),
                              source=source, impl=obj, on_bar=getattr(obj, "spx_detector_on_bar", None),
                              symbols=desc.get("symbols"))
        if plugin.on_bar is not None:
            plugin.invoke = _invoker(plugin.on_bar)
        self.plugins[name] = plugin
        return plugin

    # ------------------------------------------------------------------ calling

    def on_bar(self, ctx, bar) -> list[SetupCandidate]:
        out: list[SetupCandidate] = []
        clock = time.perf_counter
        budget_s = self.budget_ms / 1000
        sym = bar.sym
        for p in self.plugins.values():
            if p.status != "active" or p.invoke is None or (p.symbols and sym not in p.symbols):
                continue
            p.calls += 1
            t0 = clock()
            try:
                result = p.invoke(ctx, bar)
            except Exception as exc:
                p.errors += 1
                p.last_error = repr(exc)[:300]
                if p.errors >= self.max_failures:
                    self._disable(p, f"raised {p.errors} times; last: {p.last_error}")
                continue
            took = clock() - t0
            if took > budget_s:
                ms = took * 1000
                p.slow += 1
                p.last_error = f"took {ms:.1f} ms (budget {self.budget_ms} ms)"
                if p.slow >= self.max_slow:
                    self._disable(p, f"over its time budget {p.slow} times; last {ms:.1f} ms")
            if result is not None:
                out.extend(self._validate(p, result, bar))
        return out

    def _validate(self, p: LoadedPlugin, result: Any, bar) -> list[SetupCandidate]:
        if result is None:
            return []
        if not isinstance(result, (list, tuple)):
            self._refuse(p, "plugin_output_not_a_list")
            return []
        out = []
        for item in result[:20]:
            if isinstance(item, SetupCandidate):
                item = item.to_dict()
            if not isinstance(item, dict):
                self._refuse(p, "candidate_not_a_map")
                continue
            data = {"detector": p.name, "family": p.family, "sym": bar.sym, "ts": bar.start_ns, **item}
            try:
                cand = schemas.validate(SetupCandidate, data)
            except (ValidationError, Exception) as exc:
                self._refuse(p, "candidate_invalid", str(exc).splitlines()[0])
                continue
            if not all(math.isfinite(x) for x in (cand.entry_low, cand.entry_high, cand.stop, *cand.targets)):
                self._refuse(p, "candidate_not_finite", "entry, stop and targets must be finite numbers")
                continue
            if not _geometry_ok(cand):
                self._refuse(p, "candidate_geometry", "stop/targets on the wrong side of the entry zone")
                continue
            out.append(cand)
        return out

    def _refuse(self, p: LoadedPlugin, reason: str, detail: str = "") -> None:
        p.refused += 1
        self.events.refused.append((reason, f"{p.name}: {detail}" if detail else p.name))

    def _disable(self, p: LoadedPlugin, why: str) -> None:
        p.status = "disabled"
        self.events.status.append({"plugin": p.name, "status": "disabled", "reason": why})

    def describe(self) -> list[dict]:
        return [{"name": p.name, "family": p.family, "version": p.version, "status": p.status, "source": p.source,
                 "calls": p.calls, "errors": p.errors, "slow": p.slow, "refused": p.refused,
                 "last_error": p.last_error} for p in self.plugins.values()]


_ACCEPTS: dict[Callable, frozenset | None] = {}


def _invoker(fn: Callable) -> Callable:
    """``f(ctx, bar)`` calling ``fn`` with the keyword arguments it declares (resolved once, at load)."""
    import inspect

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
        import inspect

        params = inspect.signature(fn).parameters
        accepts = _ACCEPTS[fn] = (None if any(p.kind is p.VAR_KEYWORD for p in params.values())
                                  else frozenset(params))
    if accepts is None:
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in accepts})


def _geometry_ok(c: SetupCandidate) -> bool:
    if not (c.entry_low <= c.entry_high):
        return False
    if c.direction == "long":
        return c.stop < c.entry_low and all(t > c.entry_high for t in c.targets)
    return c.stop > c.entry_high and all(t < c.entry_low for t in c.targets)
