"""Issue 22 item 1: with transport = tcp and no CURVE anyone who reaches the ports could store a user's
Tradier token, flatten accounts and read every user's orders. A real service process now refuses to
start on an unauthenticated tcp bus unless ``[bus] allow_insecure_tcp = true``, and then only on a
loopback bind and with a loud warning. Also: the secrets each supervisord program gets."""

from __future__ import annotations

import sys

import pytest

from services.cli import supervise
from spx_common.config import BusConfig, ConfigError, PROJECT_DIR
from spx_testing import ServiceProcess
from tests.conftest import free_port


def _coach(run_dir, env: dict[str, str], **kw) -> ServiceProcess:
    return ServiceProcess.service("coach", run_dir=run_dir, env={
        "SPX_BUS_TRANSPORT": "tcp", "SPX_BUS_TCP_BASE_PORT": str(free_port() // 2 * 2 % 60000 + 2000), **env}, **kw)


def test_plain_tcp_is_refused_unless_allowed_on_loopback(run_dir):
    with _coach(run_dir, {}, ok_codes=(2,)) as refused:
        refused.expect_exit(30, codes=(2,))
    out = refused.output()
    assert "curve = true" in out and "allow_insecure_tcp" in out, out
    with _coach(run_dir, {"SPX_BUS_ALLOW_INSECURE_TCP": "true", "SPX_BUS_TCP_BIND_HOST": "0.0.0.0"},
                ok_codes=(2,)) as wide:
        wide.expect_exit(30, codes=(2,))
    assert "loopback" in wide.output()

    with _coach(run_dir, {"SPX_BUS_ALLOW_INSECURE_TCP": "true", "SPX_RUNTIME_LOG_LEVEL": "INFO"}) as allowed:
        # runs, and says so loudly
        allowed.wait_ready(lambda: "INSECURE BUS" in allowed.output(), 30, "the insecure-bus warning")
        line = next(ln for ln in allowed.output().splitlines() if "INSECURE BUS" in ln)
        assert "CRITICAL" in line, line
        assert allowed.alive()
    # leaving the block: SIGTERM, and the coach must exit 0


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
