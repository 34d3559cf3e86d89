"""Config: defaults, TOML, environment precedence, clear errors, generated reference in sync."""


import pytest

from spx_common.config import BusConfig, ConfigError, RuntimeConfig, Section, env_field, load, reference_markdown
from spx_common.config import PROJECT_DIR


class DemoConfig(Section):
    section = "demo"
    speed: float = env_field(1.0, "Replay speed.", "DEMO_SPEED")
    symbols: list[str] = env_field(["SPY"], "Symbols.")


def test_defaults_toml_and_env_precedence(tmp_path, monkeypatch):
    cfg_file = tmp_path / "spx.toml"
    cfg_file.write_text('[demo]\nspeed = 2.5\nsymbols = ["SPY", "QQQ"]\n[bus]\nhwm = 200000\n')
    monkeypatch.setenv("SPX_CONFIG", str(cfg_file))
    assert load(DemoConfig, environ={}).speed == 2.5
    assert load(DemoConfig, environ={"SPX_DEMO_SPEED": "3"}).speed == 3.0
    assert load(DemoConfig, environ={"DEMO_SPEED": "4"}).speed == 4.0
    assert load(DemoConfig, environ={"SPX_DEMO_SYMBOLS": "A, B"}).symbols == ["A", "B"]
    assert load(BusConfig, environ={}).hwm == 200000


def test_invalid_values_name_the_key_and_source(monkeypatch):
    monkeypatch.delenv("SPX_CONFIG", raising=False)
    with pytest.raises(ConfigError) as exc:
        load(BusConfig, environ={"SPX_BUS_HWM": "10"})
    assert "[bus] hwm" in str(exc.value) and "SPX_BUS_HWM" in str(exc.value)
    with pytest.raises(ConfigError, match="unknown_key|Extra inputs"):
        load(BusConfig, overrides={"unknown_key": 1})


def test_missing_config_file_is_an_error(monkeypatch):
    monkeypatch.setenv("SPX_CONFIG", "/nonexistent/spx.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load(RuntimeConfig)


def test_endpoints_ipc_and_tcp(tmp_path):
    rt = RuntimeConfig(run_dir=tmp_path)
    assert BusConfig().pub_endpoint("feed", rt) == f"ipc://{tmp_path}/sock/feed.pub"
    tcp = BusConfig(transport="tcp", tcp_base_port=47100, hosts={"feed": "10.0.0.2"})
    assert tcp.pub_endpoint("feed", rt, bind=True) == "tcp://127.0.0.1:47100"
    assert tcp.pub_endpoint("feed", rt) == "tcp://10.0.0.2:47100"
    assert tcp.rep_endpoint("aggregator", rt) == "tcp://127.0.0.1:47103"
    sharded = BusConfig(transport="tcp", instances={"detector": ["detector-1", "detector-2"]},
                        hosts={"detector-2": "10.0.0.3"})
    assert sharded.instances_of("detector") == ["detector-1", "detector-2"]
    assert sharded.pub_endpoint("detector-2", rt) == "tcp://10.0.0.3:47136"
    assert sharded.pub_endpoint("detector-1", rt) == "tcp://127.0.0.1:47120"
    assert BusConfig().pub_endpoint("detector-2", rt) == f"ipc://{tmp_path}/sock/detector-2.pub"


def test_config_reference_doc_is_in_sync():
    from services.cli.commands.config import import_all_sections

    expected = reference_markdown([s for s in import_all_sections() if s.section != "demo"])
    doc = PROJECT_DIR / "docs" / "config.md"
    assert doc.exists(), "run: spx config docs > docs/config.md"
    assert doc.read_text() == expected, "docs/config.md is stale: run 'spx config docs > docs/config.md'"
