"""Run a real FeedService on a background thread (own event loop, real sockets) and collect its frames."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

import zmq

from spx_common.bus import Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from tests.conftest import eventually

from services.feed.config import FeedConfig
from services.feed.service import FeedService


class RunningFeed:
    """Context manager: start a FeedService, subscribe to its PUB socket, stop it on exit."""

    def __init__(self, run_dir, prefixes: list[str] | None = None, *, replay_source=None, **cfg: Any) -> None:
        self.runtime = RuntimeConfig(run_dir=run_dir)
        self.bus = BusConfig()
        self.cfg = FeedConfig(**cfg)
        self.service = FeedService(self.runtime, self.bus, config=self.cfg, source=replay_source)
        self.prefixes = prefixes if prefixes is not None else ["tick.", "status.feed", "chain."]
        self.frames: dict[str, list] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.exit_code: int | None = None

    def __enter__(self) -> RunningFeed:
        self.ctx = zmq.Context()
        self.sub = Subscriber(self.ctx, [self.bus.pub_endpoint("feed", self.runtime)], self.prefixes)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.exit_code = self.loop.run_until_complete(self.service.run_async())
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if "status.feed" in self.prefixes:
            # the subscriber is connected once the first periodic status arrives (no slow-joiner races)
            eventually(lambda: self.topics("status.feed"), 5, what="first status.feed frame")
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            f = self.sub.recv(0.1)
            if f is not None:
                with self._lock:
                    self.frames[f.topic].append((f, f.body()))

    def bodies(self, prefix: str) -> list:
        with self._lock:
            return [b for t, fs in self.frames.items() if t.startswith(prefix) for _, b in fs]

    def topics(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [t for t in self.frames if t.startswith(prefix)]

    def events(self, prefix: str = "tick.") -> list:
        """Events published so far whose ``tick.<sym>`` starts with ``prefix`` (whatever topic carried
        them: options travel on their root's topic, ``tick.O:<root>``)."""
        return [ev for body in self.bodies("tick.") for ev in body if f"tick.{ev.sym}".startswith(prefix)]

    def __exit__(self, *exc) -> None:
        svc = self.service
        if getattr(self, "loop", None) is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(svc.stop_event.set)
        self._thread.join(15)
        self._stop.set()
        self._reader.join(2)
        self.sub.close()
        self.ctx.destroy(linger=0)
        assert not self._thread.is_alive(), "feed service did not stop"


#: a live feed against the fake Massive server, with reconnects fast enough for tests
LIVE_TEST_CONFIG = dict(source="live", backoff_initial_s=0.05, backoff_max_s=0.3, backoff_stable_s=0.5,
                        poll_after_s=30, poll_market_hours_only=False, chain_every_s=30, ping_interval_s=5,
                        ping_timeout_s=5, connect_timeout_s=3)


def live_feed(run_dir, fake, prefixes: list[str] | None = None, *, key: str = "k", **cfg: Any) -> RunningFeed:
    """A :class:`RunningFeed` in live mode on ``fake`` (``LIVE_TEST_CONFIG``; any key can be overridden)."""
    opts = {**LIVE_TEST_CONFIG, "api_key": key, "ws_url": fake.ws_url, "rest_url": fake.rest_url, **cfg}
    return RunningFeed(run_dir, prefixes, **opts)
