"""``spx tail TOPIC``: subscribe to a topic prefix on every service and print decoded frames."""

from __future__ import annotations

import json
import sys
import time

import msgspec
import zmq

from services.cli.common import configs
from spx_common.bus import Subscriber
from spx_common.codec import FrameError
from spx_common.config import SERVICES


def register(sub) -> None:
    p = sub.add_parser(
        "tail", help="print decoded frames of a topic prefix (the first debugging tool)",
        description="Subscribe to TOPIC (a prefix: 'tick.SPY', 'bar.1s.', 'setup.', 'hb.', '' for everything) on "
        "every service's PUB socket and print one JSON line per frame: topic, header and body.",
    )
    p.add_argument("topic", help="topic prefix, e.g. tick.SPY, bar.1s.I:SPX, setup.transition, coach.alice, hb.")
    p.add_argument("-n", "--count", type=int, default=0, help="stop after N frames (default: until Ctrl-C)")
    p.add_argument("-t", "--timeout", type=float, default=0.0, help="stop after T seconds (default: never)")
    p.add_argument("--service", action="append", choices=SERVICES, help="only these publishers (repeatable)")
    p.add_argument("--headers", action="store_true", help="print headers only, do not decode bodies")
    p.set_defaults(func=cmd_tail)


def cmd_tail(args) -> int:
    runtime, bus = configs()
    services = args.service or list(SERVICES)
    endpoints = [bus.pub_endpoint(i, runtime) for s in services for i in bus.instances_of(s)]
    sub = Subscriber(zmq.Context.instance(), endpoints, [args.topic],
                     heartbeats=args.topic.startswith("hb"))
    started = time.monotonic()
    deadline = started + args.timeout if args.timeout else None
    printed = 0
    hinted = False
    out = sys.stdout
    try:
        while not args.count or printed < args.count:
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            frame = sub.recv(min(wait, 0.5))
            if frame is None or not frame.topic.startswith(args.topic):
                if not printed and not hinted and time.monotonic() - started >= HINT_AFTER_S:
                    hinted = True
                    _hint_no_frames(args.topic, endpoints)
                continue
            doc = {"topic": frame.topic, "type": frame.type, "src": frame.src, "seq": frame.seq,
                   "event_ns": frame.event_ns, "pub_ns": frame.pub_ns}
            if not args.headers:
                try:
                    doc["body"] = msgspec.to_builtins(frame.body())
                except FrameError as exc:
                    doc["error"] = str(exc)
            out.write(json.dumps(doc, default=str) + "\n")
            out.flush()
            printed += 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        sub.close()
        if not printed and not hinted:
            _hint_no_frames(args.topic, endpoints)
        lost, bad = sub.core.lost.total(), sub.core.bad.total()
        if lost or bad:
            print(f"spx tail: {int(lost)} frames lost, {int(bad)} bad frames refused", file=sys.stderr)
    return 0


HINT_AFTER_S = 3.0  # silence on the prefix this long: say so, and what is being published instead


def _hint_no_frames(prefix: str, endpoints: list[str], probe_s: float = 1.0, limit: int = 40) -> None:
    """Tell the operator on stderr that nothing arrived on ``prefix``, and which topic families the mesh
    publishes now (a bounded probe of every topic for ``probe_s``), so a typo is not mistaken for silence."""
    probe = Subscriber(zmq.Context.instance(), endpoints, [""], heartbeats=True)
    families: set[str] = set()
    end = time.monotonic() + probe_s
    try:
        while len(families) < limit and (left := end - time.monotonic()) > 0:
            frame = probe.recv(min(left, 0.2))
            if frame is not None:
                families.add(frame.topic.split(".", 1)[0] + "." if "." in frame.topic else frame.topic)
    finally:
        probe.close()
    seen = ", ".join(sorted(families)) if families else "nothing (is the mesh running? try 'spx status')"
    print(f"spx tail: no frames on topic prefix {prefix!r} yet; the mesh publishes: {seen}", file=sys.stderr)
