"""Shared builders: a synthetic-session chain and setups around its spot."""

from services.feed.synthetic import SyntheticSession
from services.selector import chain as chains

SESSION = SyntheticSession(seed=7)
T = SESSION.open_ns + 3600 * 10**9


def chain_doc(t: int = T) -> dict:
    return {"ts": t, "root": "SPXW", "underlying": SESSION.spot(SESSION.sim_seconds(t)), "contracts": SESSION.chain(t)}


def chain(t: int = T) -> chains.Chain:
    c, problems = chains.from_feed_doc(chain_doc(t))
    assert not problems
    return c
