"""The plugin docs are tested (datasette's habit): a hook, a context field, a state key or a
built-in detector that docs/plugins.md does not mention fails the suite."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import re
from pathlib import Path

import spx_builtin_detectors
from services.detector import hookspecs
from services.detector.context import DetectorContext
from services.detector.market import ET
from services.detector.testing import run_plugin
from spx_common.models import MicroBar

DOC = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()


def test_every_hookspec_is_documented_with_its_arguments():
    specs = [(n, f) for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("spx_detector_")]
    assert specs, "no hookspecs found"
    for name, fn in specs:
        assert f"`{name}(" in DOC, f"hook {name} is not in docs/plugins.md"
        assert fn.__doc__ and "versionadded" in fn.__doc__, f"hook {name} has no docstring with versionadded"
        for arg in inspect.signature(fn).parameters:
            assert f"`{arg}`" in DOC, f"argument {arg} of {name} is not documented"
    assert f"API version **{hookspecs.API_VERSION}**" in DOC


def test_every_context_field_and_state_key_is_documented():
    for f in dataclasses.fields(DetectorContext):
        assert f"`ctx.{f.name}`" in DOC, f"context field ctx.{f.name} is not documented"
    captured = {}

    def spy(ctx, bar):
        captured["state"] = ctx.state

    spy.__name__ = "spx_detector_on_bar"

    class Spy:
        @staticmethod
        @hookspecs.hookimpl
        def spx_detector_describe():
            return {"name": "spy", "family": "test", "api_version": hookspecs.API_VERSION}

        spx_detector_on_bar = staticmethod(hookspecs.hookimpl(spy))

    t0 = int(dt.datetime(2026, 11, 20, 9, 30, tzinfo=ET).timestamp()) * 10**9
    bars = [MicroBar(sym="SPY", interval="1s", start_ns=t0 + i * 10**9, open=1, high=1, low=1, close=1,
                     volume=1) for i in range(3)]
    run_plugin(Spy(), bars, chain={"underlying": 1.0, "contracts": []})
    keys = set(captured["state"])
    assert keys >= {"vwap", "opening_range", "baseline", "flow", "gex", "pivots", "regime"}
    table = DOC[DOC.index("`ctx.state` keys"):DOC.index("## Candidates")]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    missing = keys - documented
    assert not missing, f"ctx.state keys not documented in docs/plugins.md: {sorted(missing)}"


def test_every_builtin_detector_is_documented_with_its_family():
    section = DOC[DOC.index("## Built-in detectors"):]
    for module in spx_builtin_detectors.DETECTORS:
        desc = module.spx_detector_describe()
        assert f"| `{desc['name']}` | `{desc['family']}` |" in section, f"{desc['name']} is not in the table"
        assert module.__doc__ and len(module.__doc__) > 200, f"{desc['name']} has no rule docstring"
