"""The two gates of every order, decided per user (pure: configuration, account state and switches in).

* :func:`send_allowed` -- whether anything at all may be sent for the user: exits, stop maintenance,
  cancels and flatten need only this (never the kill switch, the auto-execution switch or opt-in);
* :func:`entry_allowed` -- whether a new *entry* may be sent (the engine checks it before every entry,
  then its own per-order limits and the per-user sizing).

Each answers ``(ok, reason)``; the reasons are block reasons published on ``block.broker``
(docs/broker.md, "Exits are never blocked by what blocks entries").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.broker import credentials as creds
from services.broker.accounts import Account
from services.broker.config import BrokerConfig


def send_allowed(cfg: BrokerConfig, a: Account | None) -> tuple[bool, str]:
    """Anything at all for the users of account ``a`` (None: an unknown user)."""
    if a is None:
        return False, "unknown_user"
    if a.token_expired:  # nothing at all is sent with a dead token, exits included
        return False, "token_expired"
    if a.record is not None:
        if a.credential_error:
            return False, "credentials_unreadable"
        return creds.user_send_allowed(cfg, a.record, token_stored=a.tradier is not None or a.paper is not None)
    if a.paper is not None:
        return True, ""
    return cfg.tradier_send_allowed()


def entry_allowed(cfg: BrokerConfig, a: Account | None, user: str, flags: Mapping[str, Any]) -> tuple[bool, str]:
    """A new entry for ``user`` of account ``a`` under the runtime switches ``flags``."""
    if a is None:
        return False, "unknown_user"
    if a.token_expired:
        return False, "token_expired"
    if a.record is not None:
        if a.credential_error:
            return False, "credentials_unreadable"
        return creds.user_allowed(cfg, a.record, token_stored=a.tradier is not None or a.paper is not None,
                                  flags=dict(flags))
    if cfg.mode == "paper":
        if not (cfg.paper_auto_execution and flags.get("paper_auto_execution")):
            return False, "paper_auto_execution_off"
        if user not in cfg.paper_users:
            return False, "not_opted_in"
        return True, ""
    ok, why = cfg.tradier_send_allowed()
    if not ok:
        return False, why
    if not flags.get("auto_execution"):
        return False, "auto_execution_flag_off"
    if user not in cfg.auto_execution_users:
        return False, "not_opted_in"
    return True, ""
