"""Loopback fakes of the vendors: :mod:`~spx_testing.fakes.massive` (market data: WebSocket + REST) and
:mod:`~spx_testing.fakes.tradier` (brokerage: REST + account stream). docs/feed.md and docs/broker.md
describe what each serves."""
