"""Codec cost per tick: msgspec typed Structs vs msgpack-python dicts vs pydantic validation.

    python benchmarks/codec.py [--n 200000]

Prints microseconds per tick for encode+decode round trips, which decided the wire codec
(msgspec on the wire; pydantic only at foreign-input boundaries).
"""

from __future__ import annotations

import argparse
import time

import msgpack
import msgspec

from spx_common import codec, schemas
from spx_common.models import MarketEvent, Trade


def bench(label: str, fn, n: int) -> float:
    fn(min(n, 1000))
    t0 = time.perf_counter()
    fn(n)
    us = (time.perf_counter() - t0) / n * 1e6
    print(f"{label:<48} {us:8.3f} us/tick  {1e6 / us:>12,.0f} ticks/s")
    return us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    n = ap.parse_args().n
    trade = Trade(sym="SPY", price=590.12, size=100, ts=1_763_650_000_000_000_000, seq=123456, exch=4, cond=[12, 37])
    as_dict = msgspec.to_builtins(trade)
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(MarketEvent)
    batch_dec = msgspec.msgpack.Decoder(list[MarketEvent])
    model = schemas.model_for(Trade)

    def msgspec_rt(k):
        for _ in range(k):
            dec.decode(enc.encode(trade))

    def msgpack_rt(k):
        for _ in range(k):
            msgpack.unpackb(msgpack.packb(as_dict))

    def pydantic_validate(k):
        for _ in range(k):
            model.model_validate(as_dict)

    def frame_rt(k):
        for i in range(k):
            p = codec.encode_payload("ticks", [trade], src="b", session="s", seq=i + 1, event_ns=1)
            codec.decode_frames([b"tick.SPY", p]).body()

    batch = [trade] * 1000

    def batch_rt(k):
        for i in range(k // 1000):
            p = codec.encode_payload("ticks", batch, src="b", session="s", seq=i + 1, event_ns=1)
            codec.decode_frames([b"tick.SPY", p]).body()

    print(f"codec round trip, n={n:,}")
    bench("msgspec Struct encode+decode", msgspec_rt, n)
    bench("msgpack-python dict pack+unpack", msgpack_rt, n)
    bench("pydantic model_validate(dict) only", pydantic_validate, n)
    bench("full frame (envelope + 1-tick body) round trip", frame_rt, n)
    bench("full frame, 1000-tick batch, per tick", batch_rt, n)
    _ = batch_dec


if __name__ == "__main__":
    main()
