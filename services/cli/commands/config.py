"""``spx config show|docs``: the effective configuration and its generated reference."""

from __future__ import annotations

import importlib
import json
import pkgutil

import services
from spx_common.config import all_sections, load, reference_markdown


def import_all_sections() -> list:
    """Import every service package's config module so all Section subclasses are known."""
    for info in pkgutil.iter_modules(services.__path__):
        for mod in ("config", "service"):
            try:
                importlib.import_module(f"services.{info.name}.{mod}")
            except ModuleNotFoundError:
                continue
    return all_sections()


def register(sub) -> None:
    p = sub.add_parser("config", help="show the effective configuration or print the reference")
    sp = p.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    s = sp.add_parser("show", help="effective values of every section (secrets masked)")
    s.set_defaults(func=cmd_show)
    d = sp.add_parser("docs", help="print the configuration reference (docs/config.md)")
    d.set_defaults(func=cmd_docs)


def _mask(name: str, value):
    if any(k in name.lower() for k in ("key", "token", "secret", "password")) and value:
        return "***"
    return value


def cmd_show(args) -> int:
    out = {}
    for cls in import_all_sections():
        cfg = load(cls)
        out[cls.section] = {k: _mask(k, v) for k, v in cfg.model_dump(mode="json").items()}
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_docs(args) -> int:
    print(reference_markdown(import_all_sections()), end="")
    return 0
