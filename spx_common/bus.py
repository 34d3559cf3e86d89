"""The bus: one import for the mesh's messaging (the names services use), kept in three modules.

- :mod:`spx_common.pubsub`: :class:`Publisher` (per-topic sequence numbers, heartbeats, the replay ring),
  :class:`SubscriberCore` (sans-I/O: loss, duplicates, peers) and the sync and asyncio subscribers on it.
- :mod:`spx_common.outbox`: :class:`Outbox`, the publisher's crash-safe journal of kept frames.
- :mod:`spx_common.rpc`: :class:`RpcServer` (the one place a failure becomes a coded reply) and the
  lazy-pirate clients :class:`RpcClient` and :class:`AsyncRpcClient` on one sans-I/O core.

Topology: every service binds one PUB socket and one ROUTER (request) socket at the endpoints
:class:`~spx_common.config.BusConfig` derives from its name; subscribers connect to the publishers
they need. No central broker, so each process fails alone.
"""

from __future__ import annotations

from spx_common.outbox import Outbox
from spx_common.pubsub import (HEARTBEAT_PREFIX, MAX_TRACKED_STREAMS, AsyncSubscriber, Peer, Publisher, Subscriber,
                               SubscriberCore, new_session)
from spx_common.rpc import (AsyncRpcClient, Handler, PirateCore, RpcClient, RpcError, RpcFatal, RpcRefused, RpcServer,
                            RpcTimeout, RpcUnavailable, call_once, decode_reply, encode_reply, encode_request,
                            rpc_error)

__all__ = [
    "HEARTBEAT_PREFIX", "MAX_TRACKED_STREAMS", "AsyncRpcClient", "AsyncSubscriber", "Handler", "Outbox", "Peer",
    "PirateCore", "Publisher", "RpcClient", "RpcError", "RpcFatal", "RpcRefused", "RpcServer", "RpcTimeout",
    "RpcUnavailable", "Subscriber", "SubscriberCore", "call_once", "decode_reply", "encode_reply", "encode_request",
    "new_session", "rpc_error",
]
