"""Detector host: pluggy detector plugins, market state, gating and the setup lifecycle."""
