"""docs/gateway.md stays in sync with the protocol models, and documents every channel and error code."""

import typing

from services.gateway import protocol
from spx_common.config import PROJECT_DIR

DOC = PROJECT_DIR / "docs" / "gateway.md"


def test_generated_schemas_match_the_code():
    text = DOC.read_text()
    assert protocol.MARKER in text
    generated = text.split(protocol.MARKER, 1)[1].strip()
    assert generated == protocol.schema_doc().strip(), "stale: run 'python -m services.gateway.protocol --write'"


def test_every_channel_and_error_code_is_described():
    head = DOC.read_text().split(protocol.MARKER, 1)[0]
    for name in (*protocol.SIMPLE_CHANNELS, *protocol.USER_CHANNELS, "price:<symbol>", "microbar:<symbol>:<interval>"):
        assert f"`{name}`" in head, name
    codes = typing.get_args(protocol.ErrorData.model_fields["code"].annotation)
    for code in codes:
        assert code in DOC.read_text(), code
    for close_code in ("4008", "1008", "1009"):
        assert close_code in head
