"""``spx up``, ``spx down``, ``spx restart``, ``spx status``: run and inspect the mesh."""

from __future__ import annotations

import json
import sys
import time

import zmq

from services.cli import supervise
from services.cli.common import configs, fail
from spx_common import health
from spx_common import provenance
from spx_common.bus import Subscriber
from spx_common.config import SERVICES
from spx_common.flags import FLAGS
from spx_common.topics import HEARTBEAT, STATUS


def register(sub) -> None:
    p = sub.add_parser("up", help="start the whole mesh under supervisord and wait for every heartbeat",
                       description="Start supervisord with supervisord.conf and every service in group 'spx', then "
                       "wait until each service has sent its first heartbeat. Exits 1 naming each service that did "
                       "not, with the reason (a configuration error names the key, its value and its source) or the "
                       "last error line of its log. With no vendor key the feed replays a generated session; the "
                       "broker is the paper broker.")
    p.add_argument("--no-wait", action="store_true", help="return without waiting for the first heartbeats")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for every service's first heartbeat (default 30)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop every service and supervisord")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("restart", help="restart one service (or all) through supervisord")
    p.add_argument("service", nargs="?", choices=SERVICES, help="service name (default: all)")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("status", help="health of every service with the reason when not healthy; exit 1 when degraded",
                       description="Shows supervisord's view of every process and, from the bus, each service's "
                       "last heartbeat (age, frames out, counters) and the feed status. A service is healthy when "
                       "supervisord has it RUNNING and its heartbeat is fresh and says 'running'; each other one is "
                       "listed with why. Exit status: 0 all healthy, 1 degraded, 3 mesh not running, 4 flags file "
                       "not usable (every switch failed closed, kill switch ON).")
    p.add_argument("--json", action="store_true", help="machine-readable output (same fields, same exit status)")
    p.add_argument("--listen", type=float, default=1.5, help="seconds to listen for heartbeats (default 1.5)")
    p.set_defaults(func=cmd_status)


def cmd_up(args) -> int:
    runtime, bus = configs()
    try:
        supervise.start(runtime)
    except supervise.MeshError as exc:
        return fail(str(exc))
    print(f"supervisord started (run dir {runtime.path()})")
    if not args.no_wait:
        t0 = time.monotonic()
        missing, beats = wait_heartbeats(runtime, bus, args.timeout)
        if not missing:  # a process can die right after its first heartbeat (the gateway's port in use)
            missing = wait_running(runtime, expected_instances(bus), max(args.timeout - (time.monotonic() - t0), 5.0))
        for name, hb in beats.items():  # up, but saying it is not fine (e.g. a detector without plugins)
            if hb.state == "degraded":
                print(f"WARNING: {name} is degraded: {hb.detail}", file=sys.stderr)
        if missing:
            print(f"spx: {len(missing)} of {len(expected_instances(bus))} services did not start:", file=sys.stderr)
            for name, reason in missing.items():
                print(f"  {name}: {reason}", file=sys.stderr)
            print(f"logs: {runtime.path('logs')}/<service>.log; the others keep running: fix it and "
                  "'spx restart SERVICE', or 'spx down'", file=sys.stderr)
            return 1
        print(f"all {len(expected_instances(bus))} services up (first heartbeat from each)")
    from services.cli.common import gateway_url

    print(f"dashboard: {gateway_url()}   websocket: {gateway_url(ws=True)}")
    print("next: 'spx status', 'spx tail bar.1s.', 'spx down'")
    return 0


def hb_age_text(age_s: float | None) -> str:
    """A heartbeat age for the status table, always two decimals ('1.00s' beside '0.04s', not '1.0s')."""
    return "-" if age_s is None else f"{age_s:.2f}s"


def expected_instances(bus) -> list[str]:
    return [i for s in SERVICES for i in bus.instances_of(s)]


def wait_heartbeats(runtime, bus, timeout_s: float) -> tuple[dict[str, str], dict]:
    """Wait (bounded) for every instance's first heartbeat; return ``{instance: reason}`` for those that
    did not send one (stopped early on a fatal record, i.e. configuration, or a FATAL/EXITED process) and
    the first heartbeat of each that did."""
    expected = expected_instances(bus)
    ctx = zmq.Context.instance()
    sub = Subscriber(ctx, [bus.pub_endpoint(i, runtime) for i in expected], [HEARTBEAT], heartbeats=True)
    heard: dict = {}
    failed: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    next_check = 0.0
    procs: dict[str, dict] = {}
    try:
        while time.monotonic() < deadline and len(heard) + len(failed) < len(expected):
            frame = sub.recv(0.2)
            if frame is not None and frame.type == "heartbeat":
                try:
                    hb = frame.body()
                except Exception:
                    continue
                heard.setdefault(hb.service, hb)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 0.5
                try:
                    procs = {p["name"]: p for p in supervise.processes(runtime)}
                except OSError:
                    procs = {}
                for name in expected:
                    if name in heard or name in failed:
                        continue
                    fatal = health.read_fatal(runtime.path(), name)
                    state = procs.get(name, {}).get("statename")
                    if fatal or state in ("FATAL", "EXITED", "STOPPED"):
                        failed[name] = health.assess(name, procs.get(name), None, None, runtime.path())[1]
    finally:
        sub.close()
    for name in expected:
        if name not in heard and name not in failed:
            reason = health.assess(name, procs.get(name), None, None, runtime.path())[1]
            log_line = health.last_error_line(runtime.path("logs", f"{name}.log"))
            if log_line and log_line not in reason:
                reason += f"; last error in its log: {log_line}"
            failed[name] = f"no heartbeat within {timeout_s:.0f}s ({reason})"
    return {name: failed[name] for name in expected if name in failed}, heard


def wait_running(runtime, names: list[str], timeout_s: float) -> dict[str, str]:
    """After the first heartbeats, wait (bounded) until supervisord has every process RUNNING (up past
    ``startsecs``); return ``{instance: reason}`` for each that went down instead, with the last error line
    of its log (e.g. ``address already in use`` when another program holds the gateway's port)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            procs = {p["name"]: p for p in supervise.processes(runtime)}
        except OSError:
            return {}
        failed, pending = {}, False
        for name in names:
            state = procs.get(name, {}).get("statename")
            if state in ("BACKOFF", "FATAL", "EXITED", "STOPPED"):
                reason = health.assess(name, procs.get(name), None, None, runtime.path())[1]
                log_line = health.last_error_line(runtime.path("logs", f"{name}.log"))
                if log_line and log_line not in reason:
                    reason += f"; last error in its log: {log_line}"
                failed[name] = f"went down after its first heartbeat ({reason})"
            elif state != "RUNNING":
                pending = True
        if failed or not pending or time.monotonic() >= deadline:
            return failed
        time.sleep(0.25)


def cmd_down(args) -> int:
    runtime, _ = configs()
    if supervise.stop(runtime):
        print("mesh stopped")
    else:
        print("mesh was not running")
    return 0


def cmd_restart(args) -> int:
    runtime, _ = configs()
    if not supervise.is_up(runtime):
        return fail("mesh is not running; 'spx up' first")
    rpc = supervise.proxy(runtime).supervisor
    names = [f"{supervise.GROUP}:{args.service}"] if args.service else None
    if names:
        rpc.stopProcess(names[0])
        rpc.startProcess(names[0])
    else:
        rpc.stopProcessGroup(supervise.GROUP)
        rpc.startProcessGroup(supervise.GROUP)
    print("restarted", args.service or "all")
    return 0


def collect_heartbeats(listen_s: float) -> tuple[dict, dict | None]:
    """Listen on every service's PUB endpoint; return latest heartbeat per service and feed status."""
    runtime, bus = configs()
    ctx = zmq.Context.instance()
    eps = [bus.pub_endpoint(i, runtime) for s in SERVICES for i in bus.instances_of(s)]
    sub = Subscriber(ctx, eps, [STATUS], heartbeats=True)
    beats: dict = {}
    feed = None
    deadline = time.monotonic() + listen_s
    try:
        while time.monotonic() < deadline:
            frame = sub.recv(max(0.05, deadline - time.monotonic()))
            if frame is None:
                continue
            try:
                body = frame.body()
            except Exception:
                continue
            if frame.type == "heartbeat":
                beats[body.service] = body
            elif frame.type == "feed_status":
                feed = body
    finally:
        sub.close()
    return beats, feed


def switch_table(rows: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Switch -> value (as text) -> services reporting it in their last heartbeat."""
    out: dict[str, dict[str, list[str]]] = {}
    for name in FLAGS:
        for r in rows:
            if name in r["flags"]:
                out.setdefault(name, {}).setdefault(str(r["flags"][name]), []).append(r["service"])
    return out


def counter_alerts(rows: list[dict]) -> list[str]:
    """The lines ``spx status`` adds for counters that are not 0 in a healthy mesh (from the heartbeats' stats):
    frames refused or lost on the bus, ticks frames the aggregator's bar core did not take as bytes."""

    def nonzero(name: str) -> dict[str, float]:
        return {r["service"]: v for r in rows if (v := r["stats"].get(name, 0))}

    out = []
    bad, lost = nonzero("bus_bad_frames_total"), nonzero("bus_frames_lost_total")
    if bad or lost:
        out.append(f"bus: bad frames {bad} lost frames {lost}")
    fallback = nonzero("aggregator_fallback_frames_total")
    if fallback:
        out.append(f"aggregator: ticks frames decoded the slow way (the bar core did not take the body as bytes; "
                   f"aggregator_fallback_frames_total) {fallback}")
    return out


def cmd_status(args) -> int:
    runtime, bus = configs()
    procs = {}
    if supervise.is_up(runtime):
        procs = {p["name"]: p for p in supervise.processes(runtime)}
    beats, feed = collect_heartbeats(args.listen) if procs else ({}, None)
    now = time.time_ns()
    # event lag is measured against the clock the mesh runs on: the wall clock live, the replay clock
    # (the feed's event time, in its status) during a replay
    replaying = feed is not None and bool(feed.source) and feed.source != "live"
    clock = feed.ts if replaying else now
    rows = []
    for name in SERVICES:
        p = procs.get(name, {})
        hb = beats.get(name)
        age = round((now - hb.ts) / 1e9, 2) if hb else None
        healthy, reason = health.assess(name, p or None, hb, age, runtime.path(),
                                        peer_timeout_s=bus.peer_timeout_s) if procs else (False, "mesh not running")
        rows.append({
            "service": name,
            "state": p.get("statename", "DOWN"),
            "pid": p.get("pid") or None,
            "uptime_s": (p["now"] - p["start"]) if p.get("statename") == "RUNNING" else None,
            "heartbeat_age_s": age,
            # event time of the newest frame handled vs the mesh's clock (the wall clock live, the replay
            # clock in a replay): how far behind the feed the service is
            "event_lag_s": round((clock - hb.stats["last_event_ns"]) / 1e9, 3)
            if hb and hb.stats.get("last_event_ns") else None,
            "health": hb.state if hb else "no heartbeat",
            "healthy": healthy,
            "reason": reason,
            "detail": hb.detail if hb else "",
            "frames_out": hb.frames_out if hb else None,
            "stats": hb.stats if hb else {},
            "flags": dict(hb.flags) if hb else {},
        })
    unhealthy = {r["service"]: r["reason"] for r in rows if not r["healthy"]}
    code = 3 if not procs else (1 if unhealthy else 0)
    feed_doc = None
    if feed is not None:
        feed_doc = {"mode": feed.mode, "connected": feed.connected, "events_per_s": feed.events_per_s,
                    "last_event_age_ms": feed.last_event_age_ms, "reconnects": feed.reconnects,
                    "detail": feed.detail, "source": feed.source, "run_id": feed.run_id,
                    "replay_date": feed.replay_date, "speed": feed.speed, "badge": provenance.badge(feed),
                    "clock_ns": clock}
    switches = switch_table(rows)
    from spx_common.flags import FlagStore

    flag_file = FlagStore(runtime.path("flags.json"))
    flag_file.reload()
    failed_closed = [r["service"] for r in rows if r["stats"].get("flags_invalid")]
    flags_error = flag_file.error or (f"applied by {', '.join(failed_closed)}" if failed_closed else None)
    if flags_error and code == 0:
        code = 4  # the mesh runs, but with every switch failed closed (kill switch ON)
    if args.json:
        print(json.dumps({"supervisord": bool(procs), "healthy": code == 0, "unhealthy": unhealthy,
                          "services": rows, "feed": feed_doc, "switches": switches, "flags_error": flags_error},
                         indent=2, default=str))
        return code
    if flags_error:
        print(f"FLAGS FILE NOT USABLE ({flags_error}): every switch at its safe value, KILL SWITCH ON; "
              "write a valid file with 'spx flags set NAME VALUE'\n")
    if not procs:
        print(f"mesh is not running (run dir {runtime.path()}); start it with 'spx up'")
        return 3
    if feed_doc:
        print(f"data: {feed_doc['badge']} (run {feed_doc['run_id'] or '-'}; event lag against the "
              f"{'replay' if replaying else 'wall'} clock)\n")
    print(f"{'service':<11} {'state':<9} {'pid':>7} {'uptime':>8} {'hb age':>7} {'health':<12} {'frames out':>11} "
          f"{'in/s':>9} {'input age':>9} {'event lag':>9}  detail")
    for r in rows:
        up = f"{r['uptime_s']}s" if r["uptime_s"] is not None else "-"
        age = hb_age_text(r["heartbeat_age_s"])
        fo = f"{r['frames_out']:,}" if r["frames_out"] is not None else "-"
        rate = r["stats"].get("bus_frames_in_total:rate")
        in_age = r["stats"].get("last_input_age_s")
        lag = r["event_lag_s"]
        lag_s = "-" if lag is None else (f"{lag:.3f}s" if abs(lag) < 100 else f"{lag / 3600:.1f}h")
        shown = r["health"] if r["healthy"] else ("UNHEALTHY" if r["health"] == "running" else r["health"])
        print(f"{r['service']:<11} {r['state']:<9} {r['pid'] or '-':>7} {up:>8} {age:>7} {shown:<12} {fo:>11} "
              f"{'-' if rate is None else f'{rate:,.0f}':>9} {'-' if in_age is None else f'{in_age:.1f}s':>9} "
              f"{lag_s:>9}  {r['detail']}")
    if feed_doc:
        age = feed_doc["last_event_age_ms"]
        print(f"\nfeed: mode={feed_doc['mode']} connected={feed_doc['connected']} "
              f"events/s={feed_doc['events_per_s']:,.0f} last event age="
              f"{'-' if age is None else f'{age:.0f} ms'} reconnects={feed_doc['reconnects']} {feed_doc['detail']}")
    if switches:
        print("\nswitches (value each running service applies; 'spx flags set NAME VALUE' changes them):")
        for name, by_value in switches.items():
            flag = FLAGS[name]
            shown = "; ".join(f"{v} ({', '.join(svcs)})" for v, svcs in by_value.items()) if len(by_value) > 1 \
                else f"{next(iter(by_value))} (all {sum(len(s) for s in by_value.values())} services)"
            mark = "" if len(by_value) == 1 and next(iter(by_value)) == str(flag.default) else "  *"
            print(f"  {name:<24} {shown}{mark}")
    for line in counter_alerts(rows):
        print("\n" + line)
    if unhealthy:
        print(f"\nDEGRADED: {len(unhealthy)} of {len(rows)} services unhealthy")
        for name, reason in unhealthy.items():
            print(f"  {name}: {reason}")
    elif flags_error:
        print(f"\nDEGRADED: all {len(rows)} services run, but every switch failed closed (flags file not usable)")
    else:
        print(f"\nhealthy: all {len(rows)} services")
    return code
