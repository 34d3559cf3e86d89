"""``spx metrics SERVICE``: a running service's Prometheus metrics."""

from __future__ import annotations

from services.cli.common import RpcError, call, fail
from spx_common.config import SERVICES


def register(sub) -> None:
    p = sub.add_parser("metrics", help="print a service's metrics (Prometheus text format)")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--grep", help="only lines containing this text")
    p.set_defaults(func=cmd_metrics)


def cmd_metrics(args) -> int:
    try:
        text = call(args.service, "metrics")
    except RpcError as exc:
        return fail(f"{args.service}: {exc} (is the mesh up? 'spx status')")
    for line in text.splitlines():
        if not args.grep or args.grep in line:
            print(line)
    return 0
