"""``spx broker flatten --direct``: close every long option position straight at Tradier.

The path an operator needs when the mesh (or the broker process) is down. It uses the same
:class:`~services.broker.tradier.TradierClient` as the broker, so every sell passes the same router guard
(:func:`router.check_payload` against the account's own positions and working orders: never a
``sell_to_open``, never more than held), and it needs only what any send needs
(``TRADIER_EXECUTION_ENABLED``, and ``TRADIER_EXECUTION_PRODUCTION_ENABLED`` off the sandbox): the kill
switch, the auto-execution switch and opt-in never block a flatten.

One round, computed from the broker's state only (so a repeated round or a second run never sends twice):

1. read the working orders; cancel every working ``buy_to_open`` (nothing new may open) and every
   working sell that is not one of our flatten exits (stops and scale-outs would block the exit);
2. read the positions; for every long option position, the quantity not already covered by a working
   flatten exit (tag ``spx-flatten-...``) is sold ``sell_to_close`` at market (tag
   ``spx-flatten-<run>-<symbol>``; a 5xx or timeout on the placement is resolved by that tag, never
   re-sent). Equities and short positions are reported, never touched.

A round that fails (expired token, 5xx past the client's retries, transport) is retried from the broker's
state after a backoff, at most ``rounds`` times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from services.broker import router
from services.broker.reconcile import is_option
from services.broker.tradier import OPEN_STATUSES, TradierClient, TradierError, dec, exec_quantity

log = logging.getLogger("spx.broker.direct")
FLATTEN_TAG = "spx-flatten"


def _remaining(o: dict) -> float:
    rem = dec(o.get("remaining_quantity"))
    return float(rem if rem is not None else dec(o.get("quantity"), Decimal(0)) - exec_quantity(o))


async def flatten_round(client: TradierClient, run: str, report: dict[str, Any]) -> None:
    """One flatten round (module docstring); fills ``report`` with what was done."""
    orders = [o for o in await client.orders() if o.get("status") in OPEN_STATUSES]
    covered: dict[str, float] = {}
    for o in orders:
        sym = str(o.get("option_symbol") or "")
        side = str(o.get("side") or "")
        if not sym:
            continue
        if side == "sell_to_close" and str(o.get("tag") or "").startswith(FLATTEN_TAG):
            covered[sym] = covered.get(sym, 0.0) + _remaining(o)
            continue
        if side in ("buy_to_open", "sell_to_close"):
            await client.cancel_order(o["id"])
            report["canceled"].append(f"{o['id']}:{side}:{sym}")
    for p in await client.positions():
        sym = str(p.get("symbol") or "")
        qty = float(dec(p.get("quantity"), Decimal(0)))
        if not is_option(sym):
            report["untouched"][sym] = qty
            continue
        if qty <= 0:
            report["untouched"][sym] = qty
            continue
        free = int(qty - covered.get(sym, 0.0))
        if free <= 0:
            report["covered"][sym] = qty
            continue
        tag = router.make_tag(FLATTEN_TAG, run, sym)
        res = await client.place_order(router.exit_payload(sym, free, tag))
        report["sold"][sym] = report["sold"].get(sym, 0) + free
        report["orders"].append(str(res.get("id")))


async def flatten(make_client: Callable[[], TradierClient], *, rounds: int = 3, backoff_s: float = 1.0,
                  run: str | None = None, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> dict[str, Any]:
    """Run :func:`flatten_round` until one completes (at most ``rounds`` attempts, a fresh client each:
    an expired token may have been replaced meanwhile). Returns the report; ``ok`` False when no round
    completed (``errors`` says why)."""
    run = run or format(time.time_ns() // 1_000_000, "x")
    report: dict[str, Any] = {"run": run, "ok": False, "canceled": [], "sold": {}, "orders": [], "covered": {},
                              "untouched": {}, "errors": []}
    for attempt in range(1, rounds + 1):
        client = make_client()
        try:
            await flatten_round(client, run, report)
            report["ok"] = True
            return report
        except router.OrderRefused as exc:
            report["errors"].append(f"round {attempt}: refused: {exc}"[:300])
            if exc.reason != "would_short":  # the guard refused the order itself: retrying cannot help
                return report
            # a cancel not yet effective at the broker still covers the position: next round, fresh state
        except TradierError as exc:
            report["errors"].append(f"round {attempt}: {type(exc).__name__}: {exc}"[:300])
            log.warning("direct flatten round %d failed: %s", attempt, exc)
        finally:
            await client.aclose()
        if attempt < rounds:
            await sleep(backoff_s * attempt)
    return report
