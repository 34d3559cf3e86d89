"""``spx plugins``: detector plugins loaded by the running detector host (or discoverable offline)."""

from __future__ import annotations

from services.cli.common import RpcError, call, print_json


def register(sub) -> None:
    p = sub.add_parser("plugins", help="list detector plugins with version, status and error counts",
                       description="Asks the running detector host; with --offline, loads the 'spx.detectors' "
                       "entry points in this process instead.")
    p.add_argument("--offline", action="store_true", help="discover entry points locally (mesh not needed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)


def cmd_plugins(args) -> int:
    if args.offline:
        from services.detector.host import PluginHost

        from services.detector.config import DetectorConfig
        from spx_common.config import load

        host = PluginHost()
        host.load_entry_points(enabled=load(DetectorConfig).entry_points_enabled)
        doc = {"plugins": host.describe(), "load_errors": host.load_errors, "available": host.available}
    else:
        try:
            doc = call("detector", "plugins")
        except RpcError as exc:
            print(f"spx: detector host not answering ({exc}); try 'spx plugins --offline'")
            return 1
    if args.json:
        print_json(doc)
        return 0
    print(f"{'name':<18} {'family':<8} {'version':<8} {'status':<9} {'calls':>7} {'errors':>6} {'slow':>5} "
          f"{'refused':>7}  source")
    for p in doc["plugins"]:
        print(f"{p['name']:<18} {p['family']:<8} {p['version']:<8} {p['status']:<9} {p['calls']:>7} "
              f"{p['errors']:>6} {p['slow']:>5} {p['refused']:>7}  {p['source']}")
        if p.get("status") in ("disabled", "probing") and p.get("reason"):
            retry = p.get("retry_in_s")
            when = f"; next probe in {retry:.0f} s" if retry is not None else ""
            print(f"{'':<18} {p['status']}: {p['reason']}{when}")
        if p.get("last_error"):
            print(f"{'':<18} last error: {p['last_error']}")
        if p.get("crashes"):
            print(f"{'':<18} worker crashes or hangs: {p['crashes']} (restarts {p.get('worker_restarts', 0)})")
    for ep in doc.get("available", []):
        print(f"available, not enabled ([detector] entry_points_enabled): {ep}")
    for err in doc.get("load_errors", []):
        print(f"not loaded: {err}")
    return 0
