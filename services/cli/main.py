"""``spx``: the operator's command line.

Every sub-command lives in its own module under ``services/cli/commands/`` and exposes
``register(subparsers)``; this file only discovers them, so adding a command never
touches another one.  Each command sets ``func(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import os
import sys

from services.cli import commands
from spx_common.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spx",
        description="SPX Command Center: run and inspect the SPX/SPXW 0DTE trading mesh.",
        epilog="Configuration: environment variables and spx.toml (docs/config.md). "
        "Run 'spx COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        try:
            module = importlib.import_module(f"services.cli.commands.{info.name}")
            module.register(sub)
        except Exception as exc:  # one broken command must not take the whole CLI down
            print(f"spx: command module {info.name!r} unavailable: {exc!r}", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # what spx writes (keys, tokens, flags, exports) is 0600, like the services' files
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"spx: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
