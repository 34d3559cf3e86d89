"""``spx plugins``: detector plugins loaded by the running detector host (or discoverable offline)."""

from __future__ import annotations

import sys

from services.cli.common import RpcError, call, print_json, table
from services.detector.host import NO_PLUGINS_WARNING


def register(sub) -> None:
    p = sub.add_parser("plugins", help="list detector plugins with version, status and error counts",
                       description="Asks the running detector host; with --offline, loads the 'spx.detectors' "
                       "entry points in this process instead.")
    p.add_argument("--offline", action="store_true", help="discover entry points locally (mesh not needed)")
    p.add_argument("--json", action="store_true", help="the plugin rows as JSON")
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
    rows = []
    for p in doc["plugins"]:
        rows.append([p["name"], p["family"], p["version"], p["status"], f"{p['calls']:,}", p["errors"], p["slow"],
                     p["refused"], p["source"]])
        notes = []
        if p.get("status") in ("disabled", "probing") and p.get("reason"):
            retry = p.get("retry_in_s")
            when = f"; next probe in {retry:.0f} s" if retry is not None else ""
            notes.append(f"{p['status']}: {p['reason']}{when}")
        if p.get("last_error"):
            notes.append(f"last error: {p['last_error']}")
        if p.get("crashes"):
            notes.append(f"worker crashes or hangs: {p['crashes']} (restarts {p.get('worker_restarts', 0)})")
        rows.extend(["", "", "", "", "", "", "", "", note] for note in notes)
    print(table(["name", "family", "version", "status", "calls", "errors", "slow", "refused", "source"], rows,
                right={4, 5, 6, 7}))
    for ep in doc.get("available", []):
        print(f"available, not enabled ([detector] entry_points_enabled): {ep}")
    for err in doc.get("load_errors", []):
        print(f"not loaded: {err}")
    if not doc["plugins"]:
        print(f"WARNING: {NO_PLUGINS_WARNING}", file=sys.stderr)
        return 1
    return 0
