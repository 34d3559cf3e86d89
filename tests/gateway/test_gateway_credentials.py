"""credentials.* over the websocket: a real gateway forwards an authenticated user's requests to the real
broker process, which seals the token into the store and tests it against the fake Tradier sandbox.

The user always comes from the connection's token (never from the message); the token is never in a
reply, a log line (gateway or broker) or the database file in plaintext.
"""

from __future__ import annotations

import json
import logging
import time

import websockets.sync.client as wsc

from services.cli.main import main
from services.gateway import auth
from services.gateway.protocol import CredentialsData, ErrorData, ServerMessage
from spx_common.crypto import generate_key
from tests.broker.harness import Harness
from spx_testing.fakes.tradier import FakeTradier
from tests.gateway.harness import SECRET, GatewayRunner

TOKEN = "tok-SECRET-5c4b3a2d1e"


def _cli(capsys, *argv) -> str:
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


class Ws:
    """A websocket client that keeps every text it received (to grep for the token afterwards)."""

    def __init__(self, url: str, user: str | None, texts: list[str]) -> None:
        token = auth.mint(user, SECRET.encode(), int(time.time()) + 600) if user else None
        self.ws = wsc.connect(url + (f"?token={token}" if token else ""), open_timeout=5)
        self.texts = texts
        welcome = self.recv()
        assert welcome["type"] == "welcome" and welcome["data"]["user"] == user

    def recv(self, timeout: float = 15.0) -> dict:
        text = self.ws.recv(timeout)
        self.texts.append(text)
        msg = json.loads(text)
        ServerMessage.model_validate(msg)
        return msg

    def ask(self, op: str, rid: str, **fields) -> dict:
        """Send one request and return its answer (``credentials`` or ``error`` with our id)."""
        self.ws.send(json.dumps({"op": op, "id": rid, **fields}))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = self.recv()
            if msg["type"] in ("credentials", "error") and msg["data"].get("id") == rid:
                (CredentialsData if msg["type"] == "credentials" else ErrorData).model_validate(msg["data"])
                return msg
        raise AssertionError(f"no answer to {op}")

    def close(self) -> None:
        self.ws.close()


def test_credentials_requests_over_the_gateway_against_the_fake_sandbox(run_dir, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    key = generate_key("k1")
    monkeypatch.setenv("SPX_CREDENTIALS_KEYS", key)
    texts: list[str] = []
    with FakeTradier(token=TOKEN, account="VA4242") as fake:
        _cli(capsys, "users", "add", "alice", "--broker", "tradier", "--auto-execution", "on")
        _cli(capsys, "users", "add", "paula")  # paper user, not opted in
        h = Harness(run_dir, {"SPX_CREDENTIALS_KEYS": key, "SPX_BROKER_SANDBOX_URL": fake.base_url,
                              "SPX_RUNTIME_LOG_LEVEL": "DEBUG",  # every log line, to grep for the token
                              "SPX_BROKER_PRODUCTION_URL": fake.base_url + "/nowhere"})
        gw = GatewayRunner(run_dir, stand_ins=("aggregator", "coach"))
        clients = []
        try:
            anon = Ws(gw.url, None, texts)
            alice = Ws(gw.url, "alice", texts)
            paula = Ws(gw.url, "paula", texts)
            bob = Ws(gw.url, "bob", texts)  # a valid token but no user record
            clients += [anon, alice, paula, bob]

            msg = anon.ask("credentials.status", "a1")
            assert msg["type"] == "error" and msg["data"]["code"] == "unauthorized"

            st = alice.ask("credentials.status", "s1")["data"]
            assert st["ok"] and st["user"] == "alice" and st["broker"] == "tradier"
            assert st["environment"] == "sandbox" and st["tokenStored"] is False
            assert st["executionAllowed"] is False and st["reason"] == "auto_execution_flag_off"

            t = alice.ask("credentials.test", "t0")["data"]
            assert t["ok"] is False and t["code"] == "test_failed" and "no token" in t["message"]

            bad = alice.ask("credentials.set", "b1", token=TOKEN, accountId="VA 42")
            assert bad["type"] == "error" and bad["data"]["code"] == "bad_request"
            assert "accountId" in bad["data"]["message"]
            short = alice.ask("credentials.set", "b2", token="abc", accountId="VA4242")
            assert short["type"] == "error" and short["data"]["code"] == "bad_request"

            done = alice.ask("credentials.set", "set1", token=TOKEN, accountId="VA4242")["data"]
            assert done == {"op": "credentials.set", "id": "set1", "user": "alice", "ok": True, "stored": True,
                            "accountId": "VA4242"}
            assert TOKEN.encode() not in (run_dir / "spx.sqlite3").read_bytes()  # sealed at rest

            t = alice.ask("credentials.test", "t1")["data"]
            assert t["ok"] and t["environment"] == "sandbox" and t["accountId"] == "VA4242"
            assert t["accountType"] == "margin" and t["optionBuyingPower"] == 40000.0
            assert fake.count("GET", "/accounts/VA4242/balances") >= 1

            st = alice.ask("credentials.status", "s2")["data"]
            assert st["tokenStored"] and st["accountId"] == "VA4242" and st["lastOkNs"] > 0
            assert st.get("lastError") is None
            assert st["executionAllowed"] is False and st["reason"] == "auto_execution_flag_off"

            # one request at a time per connection: a second one while the balances call hangs is refused
            fake.script("hang", "balances", delay_s=1.5)
            alice.ws.send(json.dumps({"op": "credentials.test", "id": "slow"}))
            busy = alice.ask("credentials.status", "s3")
            assert busy["type"] == "error" and busy["data"]["code"] == "busy"
            slow = None
            while slow is None:
                msg = alice.recv()
                if msg["data"].get("id") == "slow":
                    slow = msg
            assert slow["type"] == "credentials"  # the slow call finished (ok, or test_failed by timeout)

            # other users: their own records only - bob has none, paula is a paper user
            nob = bob.ask("credentials.status", "n1")["data"]
            assert nob["ok"] is False and nob["code"] == "no_user" and nob["user"] == "bob"
            nob = bob.ask("credentials.test", "n2")["data"]
            assert nob["ok"] is False and nob["code"] == "no_user"
            pst = paula.ask("credentials.status", "p1")["data"]
            assert pst["broker"] == "paper" and pst["tokenStored"] is False and pst["reason"] == "not_opted_in"
            assert paula.ask("credentials.remove", "p2")["data"]["removed"] is False  # alice's token is not hers
            assert alice.ask("credentials.status", "s4")["data"]["tokenStored"] is True

            gone = alice.ask("credentials.remove", "r1")["data"]
            assert gone["ok"] and gone["removed"] is True
            assert alice.ask("credentials.status", "s5")["data"]["tokenStored"] is False

            metrics = h.call("metrics")
            assert 'broker_credentials_requests_total{method="credentials.status",outcome="no_user"} 1' in metrics
            assert 'broker_credentials_requests_total{method="credentials.set",outcome="ok"} 1' in metrics
        finally:
            for c in clients:
                c.close()
            gw.close()
            h.close()
        broker_log = h.proc.output()
    assert "credentials of alice sealed" in broker_log
    assert TOKEN not in broker_log
    assert all(TOKEN not in t for t in texts)
    # the gateway (in this process) logs nothing with the token; the test's own websocket client is the browser
    leaks = [r.name for r in caplog.records if r.name != "websockets.client"
             and (TOKEN in r.getMessage() or TOKEN in str(r.__dict__))]
    assert any(r.name.startswith("spx.gateway") for r in caplog.records)
    assert leaks == []
    assert TOKEN not in capsys.readouterr().out


def test_credentials_without_a_broker_answer_broker_unavailable(run_dir):
    gw = GatewayRunner(run_dir)  # the harness only publishes for the broker; nothing answers its RPC
    try:
        c = Ws(gw.url, "alice", [])
        msg = c.ask("credentials.set", "x", token=TOKEN, accountId="VA1")
        assert msg["type"] == "error" and msg["data"]["code"] == "broker_unavailable"
        assert TOKEN not in json.dumps(msg)
        # the connection lives on
        c.ws.send(json.dumps({"op": "ping", "id": "p"}))
        assert c.recv()["type"] == "pong"
        c.close()
    finally:
        gw.close()
