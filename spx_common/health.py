"""Why a service is not healthy, in one sentence, for ``spx up``, ``spx status`` and the gateway.

Two sources besides heartbeats:

* the *fatal record* ``<run_dir>/fatal/<instance>.json``: a process that cannot start because of its
  configuration writes the reason there (the key, its value and its source) before it exits 2, and a
  process that starts removes its own; ``spx up`` clears them all before starting supervisord;
* the last error line of ``<run_dir>/logs/<instance>.log`` (supervisord's capture of the process'
  JSON log lines and stderr) for every other way of dying.

:func:`assess` is the one rule deciding healthy or not from supervisord's state, the last heartbeat
and these, so the commands and the dashboard never disagree.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

FATAL_DIR = "fatal"


def fatal_path(run_dir: Path, instance: str) -> Path:
    return run_dir / FATAL_DIR / f"{instance}.json"


def record_fatal(run_dir: Path, instance: str, reason: str) -> None:
    """Write why ``instance`` cannot start (best effort: an unwritable run dir must not hide the error)."""
    path = fatal_path(run_dir, instance)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"service": instance, "reason": reason, "ts": time.time_ns(), "pid": os.getpid()}))
        tmp.replace(path)
    except OSError:
        pass


def clear_fatal(run_dir: Path, instance: str | None = None) -> None:
    """Remove ``instance``'s fatal record (every record when ``instance`` is None)."""
    paths = [fatal_path(run_dir, instance)] if instance else list((run_dir / FATAL_DIR).glob("*.json"))
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass


def read_fatal(run_dir: Path, instance: str) -> str | None:
    """The reason in ``instance``'s fatal record, or None."""
    try:
        doc = json.loads(fatal_path(run_dir, instance).read_text())
    except (OSError, ValueError):
        return None
    reason = doc.get("reason") if isinstance(doc, dict) else None
    return str(reason) if reason else None


def config_reason(message: str) -> str:
    """A ConfigError's text as one line: the lines naming the bad keys, without the preamble."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    keys = [ln for ln in lines if ln.startswith("[")]
    return "invalid configuration: " + "; ".join(keys) if keys else " ".join(lines)


def last_error_line(log: Path, tail_bytes: int = 65536) -> str | None:
    """The newest line of ``log`` that reports an error: a JSON log record at ERROR or above (its
    message), or a plain stderr line (a traceback's last line, a configuration error's key line)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and str(rec.get("level", "")).upper() in ("ERROR", "CRITICAL"):
                return str(rec.get("msg") or rec.get("message") or line)[:400]
            continue
        if line.startswith(("File ", "^", "~")) or line == "Traceback (most recent call last):":
            continue
        return line[:400]
    return None


def stopped_by_signal(pid: int | None) -> bool:
    """True when ``pid`` is stopped (SIGSTOP/SIGTSTP: state T in /proc)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] in (["T"], ["t"])


def assess(service: str, proc: dict[str, Any] | None, heartbeat: Any, heartbeat_age_s: float | None, run_dir: Path,
           *, supervised: bool = True, peer_timeout_s: float = 3.0) -> tuple[bool, str]:
    """``(healthy, reason)`` of one service.

    ``proc``: supervisord's process info (None when supervisord does not list it); ``heartbeat``: the last
    heartbeat heard (None when none); ``heartbeat_age_s``: its age. A service is healthy when supervisord
    has it RUNNING (or it is not supervised), its heartbeat is fresh and its state is ``running``."""
    state = (proc or {}).get("statename") if supervised else "RUNNING"
    if supervised and state != "RUNNING":
        if state in ("STARTING",) and heartbeat is None:
            reason = read_fatal(run_dir, service)
            return False, reason or "starting: no heartbeat yet"
        why = read_fatal(run_dir, service) or last_error_line(run_dir / "logs" / f"{service}.log")
        label = state or "not running"
        return False, f"{label}: {why}" if why else label
    if heartbeat is None:
        why = read_fatal(run_dir, service)
        if why:
            return False, why
        pid = (proc or {}).get("pid")
        if stopped_by_signal(pid):
            return False, f"no heartbeat: process {pid} is stopped (SIGSTOP)"
        return False, "no heartbeat"
    if heartbeat_age_s is not None and heartbeat_age_s > peer_timeout_s:
        pid = (proc or {}).get("pid")
        stopped = " (process stopped, SIGSTOP)" if stopped_by_signal(pid) else ""
        return False, f"no heartbeat for {heartbeat_age_s:.1f}s{stopped}"
    hb_state = getattr(heartbeat, "state", "running")
    if hb_state != "running":
        detail = getattr(heartbeat, "detail", "") or ""
        return False, f"{hb_state}: {detail}" if detail else hb_state
    return True, ""
