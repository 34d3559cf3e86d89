"""``spx db upgrade|current``: apply or inspect the store's migrations (SQLite default, DATABASE_URL)."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from services.cli.common import fail
from spx_common.store import current, database_url, head, upgrade


def register(sub) -> None:
    p = sub.add_parser("db", help="database migrations (upgrade, current)",
                       description="Database: DATABASE_URL, or <run_dir>/spx.sqlite3 when unset.")
    sp = p.add_subparsers(dest="db_cmd", metavar="ACTION", required=True)
    u = sp.add_parser("upgrade", help="apply migrations up to the newest (or --revision)")
    u.add_argument("--revision", default="head")
    u.set_defaults(func=cmd_upgrade)
    sp.add_parser("current", help="print the revision the database is at").set_defaults(func=cmd_current)


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url()).render_as_string(hide_password=True)


def cmd_upgrade(args) -> int:
    try:
        upgrade(database_url(), args.revision)
        rev = current(database_url())
    except SQLAlchemyError as exc:
        return fail(f"cannot upgrade {_safe_url()}: {type(exc).__name__}: {exc.__cause__ or exc}".splitlines()[0])
    print(f"{_safe_url()}: at revision {rev} (newest {head()})")
    return 0


def cmd_current(args) -> int:
    try:
        rev = current(database_url())
    except SQLAlchemyError as exc:
        return fail(f"cannot read {_safe_url()}: {type(exc).__name__}".splitlines()[0])
    newest = head()
    state = "up to date" if rev == newest else ("not migrated" if rev is None else f"behind (newest {newest})")
    print(f"{_safe_url()}: {rev or '-'} {state}")
    return 0 if rev == newest else 3
