"""The broker process: execution that is safe by construction, fills, reconciliation, paper mode.

Layout (pure cores, thin I/O shells):

* :mod:`.config`   -- the ``[broker]`` config section (Tradier credentials, safety flags, limits, users);
* :mod:`.router`   -- pure payload builders, the SPX tick grid and the short-option guard;
* :mod:`.tradier`  -- async Tradier REST client (typed errors, rate limits, safe retries, tag lookup)
  and the account-events stream reader;
* :mod:`.paper`    -- the local simulated broker that fills against live option quotes;
* :mod:`.engine`   -- the pure execution decision core (event time in, intents out);
* :mod:`.ledger`   -- orders, fills and positions per user, with P&L and slippage statistics;
* :mod:`.portfolio`-- pure portfolio snapshot / PDT alert / reconciliation / flatten logic;
* :mod:`.service`  -- the :class:`~spx_common.service.BusService` wiring it all to the bus.
"""
