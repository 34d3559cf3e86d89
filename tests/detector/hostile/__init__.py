"""Hostile detector plugins for the isolation tests, each its own plugin package (entry point).

Each misbehaves only when ``ctx.config`` (its plugin config) says ``{"bad": true}``, so a probe
after its back-off can be made to succeed or fail by the test; ``good`` always behaves.
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl

__all__ = ["API_VERSION", "bad", "candidate", "describe", "hookimpl"]


def describe(name: str) -> dict:
    return {"name": name, "family": name, "version": "1", "api_version": API_VERSION}


def candidate(bar) -> dict:
    c = bar.close
    return {"direction": "long", "entry_low": c, "entry_high": c + 0.1, "stop": c - 1.0,
            "targets": [c + 1.0, c + 2.0], "evidence": {"n": bar.start_ns}}


def bad(ctx, name: str) -> bool:
    import os

    flag = os.environ.get("HOSTILE_BEHAVE_FILE")  # present: the test lets them behave
    return not (flag and os.path.exists(flag))
