"""Issue 22 item 1: with transport = tcp and no CURVE anyone who reaches the ports could store a user's
Tradier token, flatten accounts and read every user's orders. A real service process now refuses to
start on an unauthenticated tcp bus unless ``[bus] allow_insecure_tcp = true``, and then only on a
loopback bind and with a loud warning. Also: the secrets each supervisord program gets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.cli import supervise
from spx_common.config import BusConfig, ConfigError, PROJECT_DIR
from tests.conftest import free_port


def _start(run_dir, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.coach"],
                            env={**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "SPX_BUS_TRANSPORT": "tcp",
                                 "SPX_BUS_TCP_BASE_PORT": str(free_port() // 2 * 2 % 60000 + 2000), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_plain_tcp_is_refused_unless_allowed_on_loopback(run_dir):
    refused = _start(run_dir, {})
    out = refused.communicate(timeout=30)[0]
    assert refused.returncode == 2 and "curve = true" in out and "allow_insecure_tcp" in out
    wide = _start(run_dir, {"SPX_BUS_ALLOW_INSECURE_TCP": "true", "SPX_BUS_TCP_BIND_HOST": "0.0.0.0"})
    out = wide.communicate(timeout=30)[0]
    assert wide.returncode == 2 and "loopback" in out

    allowed = _start(run_dir, {"SPX_BUS_ALLOW_INSECURE_TCP": "true", "SPX_RUNTIME_LOG_LEVEL": "INFO"})
    try:
        for line in allowed.stdout:  # runs, and says so loudly
            if "INSECURE BUS" in line:
                assert '"CRITICAL"' in line or "CRITICAL" in line
                break
        else:
            pytest.fail("no insecure-bus warning before the process ended")
        assert allowed.poll() is None
    finally:
        allowed.terminate()
        allowed.communicate(timeout=15)
    assert allowed.returncode == 0


@pytest.mark.parametrize("bus", [
    BusConfig(), BusConfig(transport="tcp", curve=True), BusConfig(transport="tcp", curve=True, tcp_bind_host="0.0.0.0"),
])
def test_safe_transports_start_without_a_warning(bus):
    assert bus.check_transport_security() is None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
def test_insecure_tcp_is_only_allowed_on_loopback(host):
    assert "INSECURE" in BusConfig(transport="tcp", allow_insecure_tcp=True, tcp_bind_host=host).check_transport_security()
    with pytest.raises(ConfigError):
        BusConfig(transport="tcp", allow_insecure_tcp=True, tcp_bind_host="10.0.0.1").check_transport_security()
    with pytest.raises(ConfigError):
        BusConfig(transport="tcp", tcp_bind_host=host).check_transport_security()


@pytest.mark.parametrize("awkward", ['a"b\\c%d,e f=g', "a'b%%c, d", "k1:QUJD+/=,k2:REVG"])
def test_rendered_supervisord_conf_gives_each_program_only_its_secrets(awkward, run_dir):
    """What supervisord itself parses from the rendered file: each program's own secrets, exactly."""
    from supervisor.options import ServerOptions, UnhosedConfigParser

    env = {"PATH": "/bin", **{name: f"{name}-{awkward}" for name in supervise.SECRET_NAMES}}
    text, sup_env = supervise.render_conf(PROJECT_DIR / "supervisord.conf", env)
    assert sup_env == {"PATH": "/bin"}
    opts = ServerOptions()
    parser = UnhosedConfigParser()
    (run_dir / "logs").mkdir()
    parser.expansions = {"ENV_SPX_RUNTIME_RUN_DIR": str(run_dir), "ENV_SPX_PYTHON": sys.executable}
    parser.read_string(text)
    got = {p.name: p.environment or {} for g in opts.process_groups_from_parser(parser) for p in g.process_configs}
    assert len(got) == 8
    for name, environment in got.items():
        secrets = {k: v for k, v in environment.items() if k in supervise.SECRET_NAMES}
        assert secrets == {k: env[k] for k in supervise.PROGRAM_SECRETS.get(name, ())}, name
        assert environment["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize("bad", ['both " and \'', "line\nbreak", '"leading'])
def test_a_secret_supervisord_cannot_pass_is_refused_by_name(bad):
    with pytest.raises(supervise.MeshError, match="TRADIER_ACCESS_TOKEN"):
        supervise.render_conf(PROJECT_DIR / "supervisord.conf", {"TRADIER_ACCESS_TOKEN": bad})
