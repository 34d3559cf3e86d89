"""Websocket gateway: the documented UI protocol (docs/gateway.md) and the dashboard page."""
