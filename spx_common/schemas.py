"""pydantic twins of the bus models, generated from :mod:`spx_common.models`.

The msgspec Structs are the one definition of each message. This module derives a
pydantic model from each of them (same fields, types, defaults and ``Meta``
constraints) for the places where pydantic is the better tool:

* JSON Schema for UI developers (``docs/gateway.md`` is generated from these);
* rich, field-by-field errors when validating foreign input at a boundary
  (plugin output, websocket client messages, REST answers) with :func:`validate`.

The hot path never goes through pydantic: msgspec validates on decode. Measured cost
(``benchmarks/codec.py``) is in ``docs/performance.md``.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, create_model

from spx_common import models as m

_CONSTRAINTS = ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern")


def _convert(tp: Any) -> Any:
    """Translate msgspec annotations (Meta constraints, Struct types) into pydantic ones."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *metas = typing.get_args(tp)
        kwargs: dict[str, Any] = {}
        for meta in metas:
            if isinstance(meta, msgspec.Meta):
                for name in _CONSTRAINTS:
                    value = getattr(meta, name)
                    if value is not None:
                        kwargs[name] = value
                if meta.description:
                    kwargs["description"] = meta.description
        return Annotated[_convert(base), Field(**kwargs)]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return model_for(tp)
    if origin is not None:
        args = tuple(_convert(a) for a in typing.get_args(tp))
        if origin in (typing.Union, types.UnionType):
            # built at run time from converted members: Union[...] takes the tuple, `X | Y` cannot
            return typing.Union[args]  # noqa: UP007
        if origin is typing.Literal:
            return tp
        try:
            return origin[args]
        except TypeError:
            return tp
    if tp is msgspec.Raw:
        return Any
    return tp


@functools.cache
def model_for(struct: type[msgspec.Struct]) -> type[BaseModel]:
    """The pydantic model mirroring ``struct`` (cached; one class per Struct)."""
    hints = typing.get_type_hints(struct, include_extras=True)
    fields: dict[str, Any] = {}
    info = msgspec.structs.fields(struct)
    for f in info:
        tp = _convert(hints[f.name])
        if f.required:
            fields[f.name] = (tp, ...)
        elif f.default_factory is not msgspec.NODEFAULT:
            fields[f.name] = (tp, Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (tp, f.default)
    cfg = struct.__struct_config__
    if cfg.tag is not None and cfg.tag_field is not None:
        fields[cfg.tag_field] = (typing.Literal[cfg.tag], cfg.tag)
    model: type[BaseModel] = create_model(
        struct.__name__,
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=struct.__doc__ or f"{struct.__name__} message.",
        **fields,
    )
    return model


#: Every bus body model, by class name.
MODELS: dict[str, type[BaseModel]] = {
    cls.__name__: model_for(cls)
    for cls in vars(m).values()
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct) and cls is not m.Base and cls.__module__ == m.__name__
}


def validate(struct: type[msgspec.Struct], data: Any) -> msgspec.Struct:
    """Validate foreign ``data`` with pydantic (clear errors) and return the wire Struct.

    Raises ``pydantic.ValidationError`` listing every bad field.
    """
    model = model_for(struct).model_validate(data)
    return msgspec.convert(model.model_dump(), struct)


def json_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return model_for(struct).model_json_schema()
