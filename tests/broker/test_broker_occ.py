"""Option symbol parse/format: the vectors of the Tradier fact sheet, round trips, clear errors."""

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from spx_common import occ

VECTORS = [
    ("SPXW  250725C05900000", "SPXW", dt.date(2025, 7, 25), "C", Decimal("5900")),
    ("SPX   250725C05900000", "SPX", dt.date(2025, 7, 25), "C", Decimal("5900")),
    ("VIX   250820P00025000", "VIX", dt.date(2025, 8, 20), "P", Decimal("25")),
    ("JPM   240501C00130750", "JPM", dt.date(2024, 5, 1), "C", Decimal("130.75")),
    ("AMZN  250101P03500500", "AMZN", dt.date(2025, 1, 1), "P", Decimal("3500.5")),
    ("BABA  240508P00088880", "BABA", dt.date(2024, 5, 8), "P", Decimal("88.88")),
    ("SPXW  260220C05000000", "SPXW", dt.date(2026, 2, 20), "C", Decimal("5000")),
]


@pytest.mark.parametrize("occ_form,root,exp,right,strike", VECTORS)
def test_vectors_parse_in_every_form(occ_form, root, exp, right, strike):
    tradier = occ_form.replace(" ", "")
    for form in (occ_form, tradier, "O:" + tradier):
        sym = occ.parse(form)
        assert (sym.root, sym.expiration, sym.right, sym.strike) == (root, exp, right, strike)
        assert sym.occ == occ_form
        assert len(sym.occ) == 21
        assert sym.tradier == tradier
        assert sym.massive == "O:" + tradier


def test_fact_sheet_cross_forms():
    assert occ.to_tradier("SPXW  250725C05900000") == "SPXW250725C05900000"
    assert occ.to_massive("SPXW250725C05900000") == "O:SPXW250725C05900000"
    assert occ.to_occ("O:SPXW250725C05900000") == "SPXW  250725C05900000"
    assert occ.parse("VIX250820P00025000").occ == "VIX   250820P00025000"
    assert occ.parse("AMZN250101P03500500").strike == Decimal("3500.5")


def test_underlying_and_type():
    s = occ.parse("SPXW260220P05000000")
    assert s.underlying == "SPX" and s.option_type == "put"
    assert occ.parse("SPX260220C05000000").underlying == "SPX"
    assert occ.parse("JPM240501C00130750").underlying == "JPM"


def test_build():
    s = occ.build("spxw", "2026-02-20", "call", 5000)
    assert s.tradier == "SPXW260220C05000000"
    assert occ.build("SPXW", dt.date(2026, 2, 20), "P", "5000.5").occ == "SPXW  260220P05000500"


@pytest.mark.parametrize(
    "bad",
    [
        "", "SPXW", "SPXW260220X05000000", "SPXW261320C05000000", "SPXW260230C05000000",
        "SPXW 260220C05000000",  # padded but not 21 chars
        " SPXW 260220C05000000", "spxw260220C05000000", "SPXW260220C0500000A", "O:SPXW  260220C05000000",
        "TOOLONGR260220C05000000", "SPXW260220C00000000", "1SPX260220C05000000", "SPXW26022C05000000",
    ],
)
def test_invalid_symbols_raise_clear_error(bad):
    with pytest.raises(occ.OptionSymbolError) as ei:
        occ.parse(bad)
    assert "symbol" in str(ei.value) or "strike" in str(ei.value)


def test_non_string_and_bad_build_inputs():
    with pytest.raises(occ.OptionSymbolError):
        occ.parse(None)  # type: ignore[arg-type]
    with pytest.raises(occ.OptionSymbolError):
        occ.build("SPXW", "2026-02-30", "C", 5000)
    with pytest.raises(occ.OptionSymbolError):
        occ.build("SPXW", "2026-02-20", "X", 5000)
    with pytest.raises(occ.OptionSymbolError):
        occ.build("SPXW", "2026-02-20", "C", "5000.0001")
    with pytest.raises(occ.OptionSymbolError):
        occ.build("SPXW", "2026-02-20", "C", "nan")
    with pytest.raises(occ.OptionSymbolError):
        occ.build("SPXW", "2026-02-20", "C", 0)


@given(
    root=st.from_regex(r"[A-Z][A-Z0-9]{0,5}", fullmatch=True),
    exp=st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)),
    right=st.sampled_from("CP"),
    milli=st.integers(1, 99_999_999),
)
def test_round_trip_property(root, exp, right, milli):
    sym = occ.OptionSymbol(root, exp, right, Decimal(milli) / 1000)
    for form in (sym.occ, sym.tradier, sym.massive):
        assert occ.parse(form) == sym
