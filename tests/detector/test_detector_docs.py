"""The plugin docs are tested (datasette's habit): a hook, a context field, a state key, a
built-in detector, one of its config keys (with its default) or one of its evidence keys that
docs/plugins.md does not mention fails the suite."""

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


def _subsection(name: str, code: bool = True) -> str:
    head = f"### `{name}`\n" if code else f"### {name}\n"
    assert head in DOC, f"docs/plugins.md has no '{head.strip()}' section"
    body = DOC[DOC.index(head) + len(head):]
    return body[:body.index("\n#")] if "\n#" in body else body


def _doc_value(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(f'"{x}"' for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def test_every_builtin_config_key_is_documented_with_its_default():
    for module in spx_builtin_detectors.DETECTORS:
        body = _subsection(module.NAME)
        rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([^|]+?) \|", body, re.M))
        for key, default in module.DEFAULTS.items():
            assert key in rows, f"config key {module.NAME}.{key} is not documented in its section"
            assert rows[key] == _doc_value(default), (f"{module.NAME}.{key}: docs say {rows[key]}, "
                                                     f"the code's default is {_doc_value(default)}")
        extra = set(rows) - set(module.DEFAULTS)
        assert not extra, f"{module.NAME}: documented keys the detector does not read: {sorted(extra)}"


def test_every_builtin_evidence_key_is_documented():
    from spx_builtin_detectors._common import CONFIRM_DEFAULTS, MICRO_EVIDENCE, MICRO_WEIGHTS

    shared = _subsection("Microstructure confirmation", code=False)
    for key in MICRO_EVIDENCE + tuple(CONFIRM_DEFAULTS):
        assert f"`{key}`" in shared, f"shared evidence/config key {key} is not in the microstructure section"
    for key, weight in MICRO_WEIGHTS.items():
        assert f"| {weight} |" in shared, f"the confidence cost of a null {key} ({weight}) is not documented"
    for module in spx_builtin_detectors.DETECTORS:
        body = _subsection(module.NAME)
        evidence = body[body.index("Evidence:"):]
        for key in module.EVIDENCE:
            if key in MICRO_EVIDENCE and "microstructure keys" in evidence:
                continue
            assert f"`{key}`" in evidence, f"evidence key {module.NAME}.{key} is not documented"
