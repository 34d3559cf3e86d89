"""Backtests: stored data replayed through the live detector host, lifecycle and exit advisor."""
