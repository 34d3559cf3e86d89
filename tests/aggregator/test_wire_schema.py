"""One schema for the tick wire: the compiled core's tick reader (``fastcore._KEYS``/``_MAPS``/``_SOURCES``,
described as ``fastcore.WIRE_SCHEMA``) is checked against ``spx_common/models.py`` when it is imported, and any
difference (a field, a type, required or optional, a ``Source`` value) fails here and makes the import fail,
so the plain-Python core (msgspec on the models) runs instead of a reader that disagrees with the models.

The drift tests build modified models (``msgspec.defstruct``) and show the check finds each change."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

import services.aggregator.bars as bars
from services.cli.commands.mesh import counter_alerts
from spx_common import models
from spx_common.models import IndexValue, Quote, Trade, WireSchemaDrift, tick_wire_schema, wire_schema_drift

try:
    from services.aggregator import fastcore
except ModuleNotFoundError as exc:  # only the extension missing skips; a WireSchemaDrift at import fails
    if exc.name != "services.aggregator.fastcore":
        raise
    pytest.skip("services.aggregator.fastcore is not built", allow_module_level=True)


def trade_with(*fields, **kw):
    """Trade with ``fields`` added or replaced (the same tag): what models.py would say after an edit."""
    return msgspec.defstruct("Trade", list(fields), bases=(Trade,), kw_only=True, tag="t", tag_field="k", **kw)


def test_the_compiled_reader_reads_exactly_the_models():
    assert wire_schema_drift(fastcore.WIRE_SCHEMA, tick_wire_schema()) == []
    fastcore.check_wire_schema()  # what the import ran
    assert bars.COMPILED and bars.NOT_COMPILED_WHY == ""
    assert set(fastcore.WIRE_SCHEMA) == {"t", "q", "v"}
    assert fastcore.WIRE_SCHEMA["t"]["source"] == ("'backfill'|'poll'|'replay'|'tick'", False)


def test_a_field_added_to_models_only_is_drift():
    changed = tick_wire_schema((trade_with(("venue", str, "")), Quote, IndexValue))
    drift = wire_schema_drift(fastcore.WIRE_SCHEMA, changed)
    assert drift == ["t.venue: str in models.py, not read by the reader"]
    with pytest.raises(WireSchemaDrift, match="t.venue"):
        fastcore.check_wire_schema(changed)
    assert issubclass(WireSchemaDrift, ImportError)  # bars' fallback to the plain-Python core catches it


def test_a_source_value_a_type_or_a_required_field_changed_in_models_only_is_drift():
    source = Literal["tick", "poll", "replay", "backfill", "snapshot"]
    cases = {
        "t.source": trade_with(("source", source, "tick")),
        "t.size": trade_with(("size", float, 0.0)),  # no longer >= 0: the reader would refuse what msgspec takes
        "t.price": trade_with(("price", Annotated[float, msgspec.Meta(ge=0, le=1e6)])),  # a bound the reader lacks
        "t.exch": trade_with(("exch", int)),  # now required
    }
    for key, changed in cases.items():
        drift = wire_schema_drift(fastcore.WIRE_SCHEMA, tick_wire_schema((changed, Quote, IndexValue)))
        assert [line.split(":")[0] for line in drift] == [key], drift
    removed = msgspec.defstruct("IndexValue", [("sym", str), ("value", float), ("ts", int)], kw_only=True, tag="v",
                                tag_field="k")  # no source, no backfilled, value and ts unbounded
    drift = wire_schema_drift(fastcore.WIRE_SCHEMA, tick_wire_schema((Trade, Quote, removed)))
    assert [line.split(":")[0] for line in drift] == ["v.backfilled", "v.source", "v.ts", "v.value"]
    other = msgspec.defstruct("Other", [("sym", str)], kw_only=True, tag="o", tag_field="k")
    assert wire_schema_drift(fastcore.WIRE_SCHEMA, tick_wire_schema((Trade, Quote, IndexValue, other))) == [
        "o: a tick kind in models.py that the reader does not read"]


def test_the_models_description_names_each_reader_type():
    schema = tick_wire_schema()
    assert schema["t"]["ts"] == ("int>=0", True) and schema["t"]["cond"] == ("list[int]", False)
    assert schema["q"]["bid_size"] == ("float>=0", False) and schema["v"]["k"] == ("tag", True)
    assert models._type_text(msgspec.inspect.type_info(dict[str, int])).startswith("DictType")


def test_spx_status_alerts_on_fallback_frames_as_on_bad_frames():
    rows = [{"service": "aggregator", "stats": {"aggregator_fallback_frames_total": 3.0}},
            {"service": "detector", "stats": {"bus_bad_frames_total": 1.0}}, {"service": "coach", "stats": {}}]
    assert counter_alerts(rows) == [
        "bus: bad frames {'detector': 1.0} lost frames {}",
        "aggregator: ticks frames decoded the slow way (the bar core did not take the body as bytes; "
        "aggregator_fallback_frames_total) {'aggregator': 3.0}"]
    assert counter_alerts([{"service": "aggregator", "stats": {"aggregator_fallback_frames_total": 0.0}}]) == []
