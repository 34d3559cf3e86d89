"""The one interface the broker service trades through: :class:`BrokerClient`.

Implemented by :class:`services.broker.paper.PaperClient` (the local paper broker: the pure simulation
:class:`~services.broker.paper.PaperBroker` behind async calls) and by
:class:`services.broker.tradier.TradierClient` (one Tradier account). The service never asks which one it
holds for an order's life cycle: it places, cancels and modifies through these calls and applies the
order events they answer, exactly as it applies the account-events stream's.

Shapes (Tradier's, which the paper broker copies):

* payloads are Tradier's form fields (``class, symbol, option_symbol, side, quantity, type, duration,
  price, stop, tag``), checked by :func:`services.broker.router.check_payload` inside every client
  against that broker's own positions and working orders (``router.OrderRefused`` when refused);
* an *order event* is a dict ``{id, status, type, side, option_symbol, exec_quantity, avg_fill_price,
  remaining_quantity, price, stop_price, tag, ...}`` (Tradier's stream event / order object);
* ``place_order``, ``cancel_order`` and ``modify_order`` answer a dict whose ``events`` are the order
  events the call produced that the caller applies now: the paper broker fills synchronously, so its
  answers carry every resulting event; Tradier's come on the account-events stream (or polling), so its
  answers carry only what the call itself learned (a placement resolved by tag or confirmed by id) and
  an empty list otherwise (the service reads a cancelled order back when a cancel answers none);
* ``positions`` are rows ``{symbol, quantity, cost_basis}``; ``balances`` is Tradier's balances object.

Errors: ``router.OrderRefused`` (refused before sending), ``ValueError`` (paper: no such working order),
:class:`services.broker.tradier.TradierError` and its subclasses (Tradier).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class BrokerClient(Protocol):
    """One broker account (see the module docstring)."""

    kind: str  # "paper" | "tradier"

    async def place_order(self, payload: dict[str, str], *, ts: int = 0) -> dict[str, Any]:
        """Place one order; ``{"id", "status", "events"}``. Never sent twice (Tradier: by its tag)."""
        ...

    async def cancel_order(self, order_id: str | int, *, ts: int = 0) -> dict[str, Any]:
        """Cancel a working order; ``{"events"}``."""
        ...

    async def modify_order(self, order_id: str | int, *, ts: int = 0, **fields: str) -> dict[str, Any]:
        """Change ``price``/``stop`` (``type``, ``duration``) of a working order; ``{"events"}``."""
        ...

    async def order(self, order_id: str | int) -> dict[str, Any]:
        """One order, as an order event."""
        ...

    async def orders(self) -> list[dict[str, Any]]:
        """Today's orders, as order events (tags included)."""
        ...

    async def positions(self) -> list[dict[str, Any]]:
        """Position rows ``{symbol, quantity, cost_basis}``."""
        ...

    async def balances(self) -> dict[str, Any]:
        """The balances object."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
