"""``spx config show|docs``: the effective configuration and its generated reference."""

from __future__ import annotations

import importlib
import json
import pkgutil

import services
from services.cli.common import fail, table
from spx_common.config import all_sections, load, reference_markdown, shown_value, sources


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
    s = sp.add_parser("show", help="effective value of every key and where it came from (secrets masked)",
                      description="Every section's effective values, each with its source: default, config file "
                      "($SPX_CONFIG or ./spx.toml) or the environment variable that set it. Secrets (API keys, "
                      "tokens, the token secret, a database URL's password) are shown as ***; nothing else is.")
    s.add_argument("--json", action="store_true", help="{section: {key: {value, source}}}")
    s.add_argument("section", nargs="?", help="only this section (e.g. aggregator)")
    s.set_defaults(func=cmd_show)
    d = sp.add_parser("docs", help="print the configuration reference (docs/config.md)")
    d.set_defaults(func=cmd_docs)


def effective(sections: list) -> dict[str, dict[str, dict]]:
    """{section: {key: {"value": shown value, "source": where it came from}}}."""
    out: dict[str, dict[str, dict]] = {}
    for cls in sections:
        cfg = load(cls)
        src = sources(cls)
        values = cfg.model_dump(mode="json")
        out[cls.section] = {k: {"value": shown_value(cls, k, v), "source": src.get(k, "default")}
                            for k, v in values.items()}
    return out


def cmd_show(args) -> int:
    sections = import_all_sections()
    if args.section:
        sections = [c for c in sections if c.section == args.section]
        if not sections:
            names = ", ".join(sorted(c.section for c in import_all_sections()))
            return fail(f"no section {args.section!r} (sections: {names})", 2)
    doc = effective(sections)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    for section, keys in doc.items():
        print(f"[{section}]")
        rows = [[k, json.dumps(v["value"], default=str), v["source"]] for k, v in keys.items()]
        for line in table(["key", "value", "source"], rows).splitlines()[1:]:
            print("  " + line)
        print()
    return 0


def cmd_docs(args) -> int:
    print(reference_markdown(import_all_sections()), end="")
    return 0
