"""Control the supervisord-managed mesh: start it, query it over its XML-RPC socket, stop it.

Used by ``spx up|down|status|restart`` and by the end-to-end tests, so tests drive
exactly what an operator drives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from spx_common import health
from spx_common.config import PROJECT_DIR, RuntimeConfig

CONF = PROJECT_DIR / "supervisord.conf"
GROUP = "spx"


class MeshError(RuntimeError):
    pass


def mesh_env(runtime: RuntimeConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for supervisord and every service it starts."""
    env = dict(os.environ)
    env["SPX_RUNTIME_RUN_DIR"] = str(runtime.path())
    env["SPX_PYTHON"] = sys.executable
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def proxy(runtime: RuntimeConfig) -> xmlrpc.client.ServerProxy:
    from supervisor.xmlrpc import SupervisorTransport

    sock = runtime.path("supervisor.sock")
    return xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{sock}")
    )


def pid(runtime: RuntimeConfig) -> int | None:
    try:
        value = int(runtime.path("supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(value, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return value


def is_up(runtime: RuntimeConfig) -> bool:
    if pid(runtime) is None:
        return False
    try:
        proxy(runtime).supervisor.getState()
        return True
    except (OSError, xmlrpc.client.Fault):
        return False


def start(runtime: RuntimeConfig, extra_env: dict[str, str] | None = None, conf: Path = CONF) -> None:
    """Start supervisord as a daemon with ``conf`` (returns once it answers)."""
    if is_up(runtime):
        raise MeshError(f"already running (supervisord pid {pid(runtime)}); use 'spx status' or 'spx down'")
    runtime.path("logs").mkdir(parents=True, exist_ok=True)
    runtime.path("sock").mkdir(parents=True, exist_ok=True)
    health.clear_fatal(runtime.path())  # a record of a previous run must not speak for this one
    env = mesh_env(runtime, extra_env)
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        env=env, capture_output=True, text=True, timeout=30,
    )
    if proc.returncode != 0:
        raise MeshError(f"supervisord failed to start: {proc.stderr.strip() or proc.stdout.strip()}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if is_up(runtime):
            return
        time.sleep(0.1)
    raise MeshError(f"supervisord did not answer within 15s; see {runtime.path('logs', 'supervisord.log')}")


def processes(runtime: RuntimeConfig) -> list[dict]:
    return proxy(runtime).supervisor.getAllProcessInfo()


def wait_running(runtime: RuntimeConfig, timeout_s: float = 30.0) -> list[dict]:
    """Wait until every program is RUNNING; raise MeshError naming FATAL/BACKOFF ones."""
    deadline = time.monotonic() + timeout_s
    infos: list[dict] = []
    while time.monotonic() < deadline:
        infos = processes(runtime)
        fatal = [p["name"] for p in infos if p["statename"] in ("FATAL", "EXITED")]
        if fatal:
            raise MeshError(f"failed to start: {', '.join(fatal)} (see {runtime.path('logs')}/<name>.log)")
        if infos and all(p["statename"] == "RUNNING" for p in infos):
            return infos
        time.sleep(0.2)
    pending = [f"{p['name']}={p['statename']}" for p in infos if p["statename"] != "RUNNING"]
    raise MeshError(f"not all running after {timeout_s:.0f}s: {', '.join(pending)}")


def stop(runtime: RuntimeConfig, timeout_s: float = 30.0) -> bool:
    """Shut supervisord and every program down; True when it was running."""
    p = pid(runtime)
    if p is None:
        return False
    try:
        proxy(runtime).supervisor.shutdown()
    except (OSError, xmlrpc.client.Fault):
        os.kill(p, 15)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid(runtime) is None:
            return True
        time.sleep(0.1)
    os.kill(p, 9)
    return True
