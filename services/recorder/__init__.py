"""Recorder: persists transitions, orders, fills, positions and snapshots off the hot path."""
