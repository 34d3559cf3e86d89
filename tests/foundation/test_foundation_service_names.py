"""No service shadows a private method of ``BusService`` by accident.

The event-time alignment added ``BusService._handle`` (frame routing) while ``GatewayService`` had an
``async def _handle`` (its websocket handler): the gateway's bus frames went to a coroutine that was never
awaited, so it received nothing at all from the bus. Subclasses may override only the private hooks
named here (each calls ``super()`` or replaces a documented default)."""

from __future__ import annotations

import importlib
import inspect

from spx_common.service import BusService

SERVICES = ("feed", "aggregator", "detector", "selector", "broker", "coach", "gateway", "recorder")
HOOKS = {"_metrics_rpc", "_peer_changed"}


def test_no_service_shadows_a_private_bus_service_method():
    private = {n for n in vars(BusService) if n.startswith("_") and not n.startswith("__")}
    clashes = []
    for svc in SERVICES:
        mod = importlib.import_module(f"services.{svc}.service")
        for cls in vars(mod).values():
            if not (inspect.isclass(cls) and issubclass(cls, BusService)) or cls is BusService:
                continue
            for klass in cls.__mro__[: cls.__mro__.index(BusService)]:
                for name in (private & set(vars(klass))) - HOOKS:
                    clashes.append(f"{klass.__module__}.{klass.__name__}.{name}")
    assert not clashes, f"these shadow BusService's own methods (rename them): {sorted(clashes)}"
