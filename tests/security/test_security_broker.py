"""Issue 22 item 5: the broker answered requests one at a time, so repeating ``credentials.test``
(about 4 s each against Tradier) made ``spx broker status`` fail 3 of 4 times ("broker not
answering"). A real broker process, a fake Tradier whose balances call hangs, abusers on their own
sockets calling ``credentials.test`` in a loop: ``spx broker status`` still answers within 1 s, and
the slow requests are bounded (``busy`` past ``max_concurrent`` in all or ``per_caller`` per socket)."""

from __future__ import annotations

import collections
import threading
import time

import zmq

from services.cli.main import main
from spx_common.bus import RpcClient, RpcError, decode_reply, encode_request
from spx_common.crypto import generate_key
from tests.broker.harness import Harness
from spx_testing.fakes.tradier import FakeTradier

TOKEN = "tok-abuse-0123456789"


def test_slow_credentials_tests_do_not_stall_broker_status(run_dir, monkeypatch, capsys):
    key = generate_key("k1")
    monkeypatch.setenv("SPX_CREDENTIALS_KEYS", key)
    with FakeTradier(token=TOKEN, account="VA4242") as fake:
        assert main(["users", "add", "alice", "--broker", "tradier"]) == 0
        h = Harness(run_dir, {"SPX_CREDENTIALS_KEYS": key, "SPX_BROKER_SANDBOX_URL": fake.base_url,
                              "SPX_BROKER_PRODUCTION_URL": fake.base_url + "/nowhere"})
        endpoint = h.bus.rep_endpoint("broker", h.rt)
        stop, threads = threading.Event(), []
        outcomes: collections.Counter = collections.Counter()
        try:
            setup = RpcClient(h.ctx, endpoint, timeout_s=10, retries=0)
            assert setup.call("credentials.set", {"user": "alice", "token": TOKEN, "account_id": "VA4242"})["stored"]
            setup.close()
            fake.script("hang", "balances", times=1000, delay_s=4.0)

            # one caller, five requests at once (a DEALER socket): two run, three are refused at once
            dealer = h.ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(endpoint)
            for _ in range(5):
                dealer.send_multipart([b"", *encode_request("credentials.test", {"user": "alice"})])
            codes = []
            for _ in range(5):
                assert dealer.poll(15_000), "no answer"
                try:
                    decode_reply(dealer.recv_multipart()[1:])
                    codes.append("answered")
                except RpcError as exc:
                    codes.append("answered" if exc.code != "busy" else "busy")
            dealer.close()
            assert sorted(codes) == ["answered"] * 2 + ["busy"] * 3

            def abuse() -> None:  # each abuser on its own socket, again and again
                client = RpcClient(h.ctx, endpoint, timeout_s=15, retries=0)
                while not stop.is_set():
                    try:
                        res = client.call("credentials.test", {"user": "alice"})
                        outcomes["ok" if res.get("ok") else str(res.get("code"))] += 1
                    except RpcError as exc:
                        outcomes[exc.code] += 1
                        time.sleep(0.05)
                client.close()
            threads = [threading.Thread(target=abuse, daemon=True) for _ in range(12)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            for _ in range(4):
                t0 = time.monotonic()
                code = main(["broker", "status", "--json"])
                took = time.monotonic() - t0
                out = capsys.readouterr()
                assert code == 0, out.err
                assert took < 1.0, f"spx broker status took {took:.2f} s during the abuse"
                time.sleep(0.5)
            assert outcomes["busy"] > 0, outcomes  # 12 abusers > max_concurrent (8)
            assert fake.count("GET", "/accounts/VA4242/balances") >= 8  # they did run, concurrently
        finally:
            stop.set()
            for t in threads:
                t.join(20)
            h.close()
