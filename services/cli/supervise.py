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

from spx_common.errors import Fatal
from spx_common import health
from spx_common.config import PROJECT_DIR, RuntimeConfig

CONF = PROJECT_DIR / "supervisord.conf"
GROUP = "spx"


class MeshError(Fatal, RuntimeError):
    pass


#: The secrets each program needs; every other program starts without them. supervisord starts with
#: none (its children inherit its environment) and hands each program its own in ``environment=`` of
#: a 0600 copy of the configuration in the run directory (:func:`render_conf`).
PROGRAM_SECRETS: dict[str, tuple[str, ...]] = {
    "broker": ("SPX_CREDENTIALS_KEYS", "SPX_CREDENTIALS_KEY_FILE", "TRADIER_ACCESS_TOKEN",
               "SPX_BROKER_ACCESS_TOKEN", "DATABASE_URL", "SPX_STORE_URL"),
    "recorder": ("DATABASE_URL", "SPX_STORE_URL"),
    "coach": ("DATABASE_URL", "SPX_STORE_URL"),  # users' coach preferences
    "feed": ("MASSIVE_API_KEY", "SPX_FEED_API_KEY"),
    "gateway": ("SPX_TOKEN_SECRET", "SPX_GATEWAY_TOKEN_SECRET"),
}
SECRET_NAMES = frozenset(name for names in PROGRAM_SECRETS.values() for name in names)


def mesh_env(runtime: RuntimeConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for supervisord and every service it starts (secrets included; :func:`start`
    takes them out of supervisord's and gives each program only its own)."""
    env = dict(os.environ)
    env["SPX_RUNTIME_RUN_DIR"] = str(runtime.path())
    env["SPX_PYTHON"] = sys.executable
    env.setdefault("PYTHONUNBUFFERED", "1")
    # one run id for every process of this 'spx up' (stamped on every stored row: spx_common.provenance)
    env.setdefault("SPX_RUN_ID", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex())
    if extra:
        env.update(extra)
    return env


def _conf_value(name: str, value: str) -> str:
    """``value`` quoted for supervisord's ``environment=``: its non-posix shlex keeps a quoted token
    whole (no escapes inside) and strips quotes at both ends; ``%`` is interpolation."""
    quote = '"' if '"' not in value else "'"
    if quote in value or "\n" in value or "\r" in value or value[:1] in "'\"" or value[-1:] in "'\"":
        raise MeshError(f"{name} holds both quote characters, a line break or a leading/trailing quote, which "
                        "supervisord cannot pass on; use a file for it (e.g. SPX_CREDENTIALS_KEY_FILE)")
    return quote + value.replace("%", "%%") + quote


def render_conf(conf: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``conf`` with each program's secrets (:data:`PROGRAM_SECRETS`, those set in ``env``) added to its
    ``environment=``, and supervisord's own environment without any secret."""
    import configparser

    text = conf.read_text().replace("%(here)s", str(conf.resolve().parent))
    parser = configparser.RawConfigParser(interpolation=None, strict=False)
    parser.read_string(text)
    lines = text.splitlines()
    for section in parser.sections():
        if not section.startswith("program:"):
            continue
        secrets = [(k, env[k]) for k in PROGRAM_SECRETS.get(section.split(":", 1)[1], ()) if env.get(k)]
        if not secrets:
            continue
        extra = ",".join(f"{k}={_conf_value(k, v)}" for k, v in secrets)
        start = lines.index(f"[{section}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        for i in range(start + 1, end):
            if lines[i].startswith("environment="):
                lines[i] = f"{lines[i]},{extra}"
                break
        else:
            lines.insert(end, f"environment={extra}")
    return "\n".join(lines) + "\n", {k: v for k, v in env.items() if k not in SECRET_NAMES}


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
    from spx_common.service import secure_run_dir

    secure_run_dir(runtime)
    runtime.path("logs").mkdir(parents=True, exist_ok=True)
    runtime.path("sock").mkdir(parents=True, exist_ok=True)
    health.clear_fatal(runtime.path())  # a record of a previous run must not speak for this one
    text, env = render_conf(conf, mesh_env(runtime, extra_env))
    rendered = runtime.path("supervisord.conf")
    fd = os.open(rendered, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # it holds the programs' secrets
        fh.write(text)
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(rendered)],
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
