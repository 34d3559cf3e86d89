"""The parity report: re-run a stored run's window through the backtest and compare, one by one.

``spx backtest --parity RUN_ID`` reads what run ``RUN_ID`` recorded (a live or replayed mesh run, or a
backtest: setup transitions, orders and fills carry their run's ``run_id``), re-runs the backtest over the
trading days of its window (same stored data, same journal for the options side) and lists every
difference:

* **transitions**, keyed by (setup id, state): missing from the re-run, extra in it, or at another event
  time or price;
* **orders**, keyed by (setup id, n-th order of the setup in time order): missing, extra, or another side,
  type, contract, quantity, limit or stop price (or event time, beyond the tolerance);
* **fills**, keyed by (setup id, n-th fill of the setup): missing, extra, or another side, contract,
  quantity or price.

A re-run row with no recorded counterpart after the run's last recorded row of its kind is outside the
window (a run stopped before its data ended saw nothing later, and its recorder writes each kind up to its
own last row): counted in ``after_window``, not a difference. Setup ids are compared
without the run's tag (``bt-<hash>:``), so a backtest's ids meet the mesh's; the
account (user) is not compared (the backtest trades one paper account). Pure: :func:`compare` takes the
recorded rows and the re-run's rows.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any
import msgspec

from spx_common.calendar import et_date

MAX_LISTED = 1000  # differences listed (all are counted)
ORDER_FIELDS = ("side", "type", "option_symbol", "quantity", "price", "stop")
FILL_FIELDS = ("side", "option_symbol", "quantity", "price")


def raw_id(setup_id: str | None) -> str:
    """A setup id without its run tag (``bt-1a2b:abc`` -> ``abc``)."""
    sid = setup_id or ""
    return sid.split(":", 1)[1] if sid.startswith("bt-") and ":" in sid else sid


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-6)
    return a == b


def _nth(rows: Iterable[dict]) -> dict[tuple[str, int], dict]:
    """Rows keyed by (raw setup id, n-th of that setup in the given order)."""
    out: dict[tuple[str, int], dict] = {}
    seen: dict[str, int] = {}
    for r in rows:
        sid = raw_id(r.get("setup_id"))
        k = seen.get(sid, 0)
        seen[sid] = k + 1
        out[(sid, k)] = r
    return out


def compare(recorded: dict[str, list[dict]], rerun: dict[str, list[dict]], *, tolerance_ns: int = 0) -> dict:
    """Every difference between a recorded run and its re-run (``{"transitions", "orders", "fills"}`` rows each,
    oldest first); ``differences`` lists at most :data:`MAX_LISTED`, ``counts`` counts them all."""
    diffs: list[dict] = []
    counts = {"transitions": 0, "orders": 0, "fills": 0}

    def add(kind: str, key: Any, what: str, recorded_v: Any = None, rerun_v: Any = None) -> None:
        counts[kind] += 1
        if len(diffs) < MAX_LISTED:
            diffs.append({"kind": kind, "key": list(key), "what": what, "recorded": recorded_v, "rerun": rerun_v})

    # a run stopped before its data ended (an operator's stop, a crash) saw nothing after its last event, and
    # its recorder wrote each kind up to its own last row (transitions, orders and fills are written apart): a
    # re-run row with no recorded counterpart after the run's last recorded row of its kind is outside the
    # recorded window, counted apart, not a difference
    last_any = max((int(r["ts"]) for k in counts for r in recorded.get(k, [])), default=2**62)
    last = {k: max((int(r["ts"]) for r in recorded.get(k, [])), default=last_any) + tolerance_ns for k in counts}
    after = {k: 0 for k in counts}

    def beyond(kind: str, row: dict) -> bool:
        if int(row["ts"]) > last[kind]:
            after[kind] += 1
            return True
        return False

    a = {(raw_id(r["setup_id"]), r["to_state"]): r for r in recorded.get("transitions", [])}
    b = {(raw_id(r["setup_id"]), r["to_state"]): r for r in rerun.get("transitions", [])}
    for key in sorted(a.keys() | b.keys(), key=lambda k: (min(x["ts"] for x in (a.get(k), b.get(k)) if x), k)):
        x, y = a.get(key), b.get(key)
        if y is None and x is not None:
            add("transitions", key, "missing from the re-run", x["ts"])
        elif x is None and y is not None:
            if not beyond("transitions", y):
                add("transitions", key, "only in the re-run", None, y["ts"])
        elif x is not None and y is not None:
            if abs(int(x["ts"]) - int(y["ts"])) > tolerance_ns:
                add("transitions", key, "ts", x["ts"], y["ts"])
            if not _same(x.get("price"), y.get("price")):
                add("transitions", key, "price", x.get("price"), y.get("price"))
    for kind, fields in (("orders", ORDER_FIELDS), ("fills", FILL_FIELDS)):
        ra, rb = _nth(recorded.get(kind, [])), _nth(rerun.get(kind, []))
        for key in sorted(ra.keys() | rb.keys()):
            x, y = ra.get(key), rb.get(key)
            if y is None and x is not None:
                add(kind, key, "missing from the re-run", _brief(x, fields))
            elif x is None and y is not None:
                if not beyond(kind, y):
                    add(kind, key, "only in the re-run", None, _brief(y, fields))
            elif x is not None and y is not None:
                for f in fields:
                    if not _same(x.get(f), y.get(f)):
                        add(kind, key, f, x.get(f), y.get(f))
                if kind == "orders" and abs(int(x["ts"]) - int(y["ts"])) > tolerance_ns:
                    add(kind, key, "ts", x["ts"], y["ts"])
    return {"agree": not any(counts.values()), "counts": counts, "differences": diffs,
            "compared": {k: [len(recorded.get(k, [])), len(rerun.get(k, []))] for k in counts},
            "after_window": after}


def _brief(r: dict, fields: tuple[str, ...]) -> dict:
    return {f: r.get(f) for f in (*fields, "ts")}


def window(recorded: dict[str, list[dict]]) -> tuple[dt.date, dt.date] | None:
    """The New York trading dates the recorded run spans (None: it recorded nothing)."""

    ts = [int(r["ts"]) for k in ("transitions", "orders", "fills") for r in recorded.get(k, [])]
    if not ts:
        return None
    return et_date(min(ts)), et_date(max(ts))


def rerun_rows(days: list) -> dict[str, list[dict]]:
    """The re-run's rows in the recorded shape, from the backtest's day results."""

    trs = [{"setup_id": t.setup_id, "to_state": t.to_state, "ts": t.ts, "price": t.price}
           for d in days for t in d.transitions]
    orders = sorted((msgspec.to_builtins(o) for d in days for o in d.orders), key=lambda o: (o["ts"], o["order_id"]))
    setup_of = {o["order_id"]: o.get("setup_id") for o in orders}
    fills = sorted(({**msgspec.to_builtins(f), "setup_id": setup_of.get(f.order_id)} for d in days for f in d.fills),
                   key=lambda f: (f["ts"], f["order_id"]))
    return {"transitions": trs, "orders": orders, "fills": fills}


def one_user(recorded: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], list[str]]:
    """The recorded orders and fills of one account (the first user by name) and every user seen: the
    backtest trades one paper account."""
    users = sorted({str(r.get("user")) for k in ("orders", "fills") for r in recorded.get(k, [])})
    if len(users) <= 1:
        return recorded, users
    keep = users[0]
    return ({"transitions": recorded.get("transitions", []),
             "orders": [r for r in recorded.get("orders", []) if r.get("user") == keep],
             "fills": [r for r in recorded.get("fills", []) if r.get("user") == keep]}, users)


def text(doc: dict) -> str:
    """The report as lines a person reads."""
    c = doc["counts"]
    head = (f"parity of {doc['run_id']} ({doc['window'][0]}..{doc['window'][1]}): "
            f"{'no differences' if doc['agree'] else 'DIFFERENCES'} — transitions {c['transitions']}, orders "
            f"{c['orders']}, fills {c['fills']} (compared: " +
            ", ".join(f"{k} {v[0]} recorded / {v[1]} re-run" for k, v in doc["compared"].items()) + "; after the "
            "run's last event, not compared: " + ", ".join(f"{k} {v}" for k, v in doc.get("after_window", {}).items())
            + ")")
    lines = [head]
    for d in doc["differences"]:
        key = ":".join(str(k) for k in d["key"])
        lines.append(f"  {d['kind']:<11} {key:<40} {d['what']}: recorded {d['recorded']!r} re-run {d['rerun']!r}")
    listed = len(doc["differences"])
    total = sum(c.values())
    if total > listed:
        lines.append(f"  ... {total - listed} more not listed")
    return "\n".join(lines)
