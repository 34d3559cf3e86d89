"""``spx keys generate|list``: CURVE keypairs for encrypted, authenticated multi-host buses."""

from __future__ import annotations

from pathlib import Path

from services.cli.common import configs, fail
from spx_common.config import SERVICES
from spx_common.curve import CurveError, generate


def register(sub) -> None:
    p = sub.add_parser("keys", help="generate and list ZeroMQ CURVE keys (multi-host deployments)",
                       description="Keys live in <run_dir>/keys (or [bus] curve_dir): private/<name>.key_secret stays "
                       "on the host that runs <name>; public/ is copied to every host and is the list of peers "
                       "allowed to connect. Enable with SPX_BUS_CURVE=true. See docs/deployment.md.")
    sp = p.add_subparsers(dest="keys_cmd", metavar="ACTION", required=True)
    g = sp.add_parser("generate", help="create keypairs (default: one per service)")
    g.add_argument("names", nargs="*", help=f"key names (default: {' '.join(SERVICES)} cli)")
    g.add_argument("--dir", type=Path, help="key directory (default from config)")
    g.add_argument("--force", action="store_true", help="replace existing keys")
    g.set_defaults(func=cmd_generate)
    ls = sp.add_parser("list", help="list public and private keys present")
    ls.add_argument("--dir", type=Path)
    ls.set_defaults(func=cmd_list)


def _dir(args) -> Path:
    runtime, bus = configs()
    return args.dir or bus.curve_keys_dir(runtime)


def cmd_generate(args) -> int:
    keys_dir = _dir(args)
    for name in args.names or [*SERVICES, "cli"]:
        try:
            pub, sec = generate(keys_dir, name, overwrite=args.force)
        except CurveError as exc:
            return fail(str(exc))
        print(f"{name}: public {pub}  secret {sec}")
    print("next: [bus] curve = true (or SPX_BUS_CURVE=true) on every host; copy public/ to every host and each "
          "secret only to the host that runs it (docs/deployment.md)")
    return 0


def cmd_list(args) -> int:
    keys_dir = _dir(args)
    pubs = sorted(p.stem for p in (keys_dir / "public").glob("*.key"))
    secs = sorted(p.name.removesuffix(".key_secret") for p in (keys_dir / "private").glob("*.key_secret"))
    print(f"key dir: {keys_dir}")
    print("authorized public keys:", ", ".join(pubs) or "none")
    print("secret keys on this host:", ", ".join(secs) or "none")
    return 0
