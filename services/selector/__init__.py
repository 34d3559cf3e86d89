"""Selector service: option chains, regime-aware contract choice, risk sizing, and the exit advisor.

Pure cores (:mod:`.chain`, :mod:`.select`, :mod:`.exits`) hold all logic; :mod:`.service` is the
thin bus shell. See ``docs/selector.md``.
"""
