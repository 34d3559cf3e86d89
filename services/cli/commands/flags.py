"""``spx flags list|set``: staged-rollout switches, changed at runtime without a restart."""

from __future__ import annotations

from services.cli.common import RpcError, call, configs, fail
from spx_common.config import SERVICES
from spx_common.flags import FLAGS, FlagError, FlagStore


def register(sub) -> None:
    p = sub.add_parser("flags", help="list or change rollout switches at runtime",
                       description="Switches: " + "; ".join(f"{f.name}: {f.description}" for f in FLAGS.values()))
    sp = p.add_subparsers(dest="flags_cmd", metavar="ACTION", required=True)
    sp.add_parser("list", help="current value and default of every switch").set_defaults(func=cmd_list)
    s = sp.add_parser("set", help="change a switch and tell every running service")
    s.add_argument("name", choices=sorted(FLAGS))
    s.add_argument("value", help="true/false, or text for tick_fanout ('all', 'none', 'alice,bob')")
    s.set_defaults(func=cmd_set)


def _store() -> FlagStore:
    runtime, _ = configs()
    store = FlagStore(runtime.path("flags.json"))
    store.reload()
    return store


def cmd_list(args) -> int:
    """Every switch as every process applies it; exit 1 while the flags file is failed closed."""
    store = _store()
    if store.error:
        print(f"FLAGS FILE NOT USABLE: {store.error}\n"
              "every switch is at its safe value (kill switch ON) until a valid file is written "
              "('spx flags set NAME VALUE')\n")
    for name, value in store.snapshot().items():
        flag = FLAGS[name]
        mark = "  (safe value: flags file not usable)" if store.error else \
            ("" if value == flag.default else "  (changed)")
        print(f"{name:<24} {str(value):<8} default {str(flag.default):<6}{mark}  {flag.description}")
    return 1 if store.error else 0


def cmd_set(args) -> int:
    store = _store()
    was = store.error
    try:
        value = store.set(args.name, args.value)
    except FlagError as exc:
        return fail(str(exc), 2)
    told = []
    for service in SERVICES:
        try:
            call(service, "flags.reload", timeout_s=0.5)
            told.append(service)
        except RpcError:
            pass
    print(f"{args.name} = {value}; applied by {', '.join(told) if told else 'no running service (file updated)'}")
    if was:
        print(f"the flags file was not usable ({was}); it now holds only {args.name}, every other switch at its "
              "default (check 'spx flags list')")
    return 0
