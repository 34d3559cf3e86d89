"""The detector plugin contract (API version 1). One file holds the whole contract.

A detector plugin is a module or object with ``@hookimpl`` functions, registered through the
``spx.detectors`` entry-point group or named in ``[detector] plugins``. Hook arguments are
keyword-only and a plugin may accept fewer of them than the spec, so new arguments never
break old plugins. The host calls every implementation itself, with its own try/except and
time budget: one broken plugin never affects another (pluggy alone would abort the call).

Versioning: a plugin declares ``api_version`` in :func:`spx_detector_describe`. The host
refuses a plugin whose major version differs from :data:`API_VERSION` with a clear message.
"""

from __future__ import annotations

import pluggy

API_VERSION = 1
PROJECT = "spx_detector"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def spx_detector_describe() -> dict:
    """Describe the detector. Called once at load.

    Return a map: ``name`` (unique), ``family`` (e.g. ``orb``, ``vwap``), ``version``,
    ``api_version`` (int, must equal the host's), ``inputs`` (e.g. ``["bar.1s", "state"]``),
    ``symbols`` (optional list; default the host's symbols).

    .. versionadded:: 1
    """


@hookspec
def spx_detector_on_bar(ctx, bar) -> list | None:
    """A closed microbar of a watched symbol, with the read-only context.

    ``bar``: :class:`spx_common.models.MicroBar` (frozen: it cannot be changed).
    ``ctx``: :class:`services.detector.context.DetectorContext` — recent closed bars with
    microstructure (``ctx.bars``), the market state (levels, VWAP bands, opening range, regime,
    GEX when a chain is known), the session clock in event time (``ctx.now_ns``,
    ``ctx.minutes_since_open``) and the plugin's own config (``ctx.config``).

    Return ``None`` or a list of setup candidates as maps with the fields of
    :class:`spx_common.models.SetupCandidate` (``direction``, ``entry_low``, ``entry_high``,
    ``stop``, ``targets``, ``confidence``, ``evidence``); ``detector``, ``family``, ``sym``
    and ``ts`` are filled in by the host when missing. Invalid candidates are refused with a
    counted reason; they never reach the lifecycle.

    .. versionadded:: 1
    """
