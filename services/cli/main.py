"""``spx``: the operator's command line.

Every sub-command lives in its own module under ``services/cli/commands/`` and exposes
``register(subparsers)``; this file only discovers them, so adding a command never
touches another one.  Each command sets ``func(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import os
import re
import sys

from services.cli import commands
from spx_common.config import ConfigError


class SpxParser(argparse.ArgumentParser):
    """argparse with close-match suggestions: ``spx stauts`` says ``did you mean 'status'?`` (every
    sub-command's parser is of this class, so ``spx config shwo`` gets one too)."""

    def error(self, message: str):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(",")]
            close = difflib.get_close_matches(m.group(1), choices, n=3, cutoff=0.6)
            if not close:
                close = [c for c in choices if c.startswith(m.group(1)[:3])][:3] if len(m.group(1)) >= 3 else []
            if close:
                message += "\n  did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = SpxParser(
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
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every sub-command without a description its one-line help as one, so ``spx down --help``
    (or ``spx broker flatten --help``) says what the command does, as the list in ``spx --help`` does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                text = helps.get(name)
                if not sub.description and text:
                    sub.description = text[:1].upper() + text[1:] + "."
                _describe(sub)


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
    except BrokenPipeError:  # 'spx ... | head': the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
