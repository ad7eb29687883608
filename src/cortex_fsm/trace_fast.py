"""Typed decoding of the common trace lines with msgspec (an optional dependency).

Importing this module fails when msgspec is not installed; replay then reads
every line with the stdlib ``json`` path of :class:`~cortex_fsm.trace.TraceReader`.

A line decodes here only when it is an ordinary ``request``, ``models`` or
``health`` event: the fields the kind needs, of the right JSON types (``t`` a
number, never a boolean), and no other field at all (so a request's
``attempt`` or ``exclude`` goes the general way). A ``/health`` body of the
documented shape is decoded with its line, straight into load readings
(:class:`HealthBody`); a line with any other ``/health`` body is decoded
again with the body as raw JSON text (:class:`HealthRaw`). A ``/models``
body, or such a ``/health`` body, is kept as the raw JSON text
(:class:`msgspec.Raw`), decoded only when it differs from the node's last
one, and always into plain JSON values: judging a body is the engine's job
(docs/semantics.md §1). Nothing is skipped unchecked: msgspec does not
validate what it skips (an unknown field, a raw body) as strictly as it
decodes, so there are no unknown fields here, and a raw body is either
decoded in full or equal, byte for byte, to one that was. Anything this
decoder refuses -- another kind, a missing or mistyped field, bad JSON, a
number out of range -- is read again by the json path, which accepts it or
says what is wrong with it, naming the file and the line. So this module
decides how fast a line is read, never what it means.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "Health",
    "HealthBody",
    "HealthRaw",
    "Models",
    "Raw",
    "Request",
    "decode_body",
    "decode_health_raw",
    "decode_line",
]

Raw = msgspec.Raw
NO_BODY: Final = msgspec.Raw()


class Request(
    msgspec.Struct, tag_field="kind", tag="request", forbid_unknown_fields=True, gc=False
):
    t: float
    id: str
    model: str


class Models(msgspec.Struct, tag_field="kind", tag="models", forbid_unknown_fields=True, gc=False):
    t: float
    node: str
    ok: bool
    body: msgspec.Raw = NO_BODY
    error: str = ""


NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class HealthModel(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    id: str
    in_flight: NonNegative
    queue_depth: NonNegative


class HealthBody(msgspec.Struct, forbid_unknown_fields=True):
    """A ``/health`` body as docs/semantics.md §1 describes it, and nothing else:
    every model with a string id and non-negative integer counts (JSON
    integers: ``true`` and ``1.0`` are refused). The other two keys are read
    as any JSON value, in full (so checked), and then ignored."""

    uptime_secs: Any = None
    devices: Any = None
    models: list[HealthModel] | None = None


class Health(msgspec.Struct, tag_field="kind", tag="health", forbid_unknown_fields=True, gc=False):
    """A successful ``/health`` poll whose body is of the documented shape."""

    t: float
    node: str
    ok: bool
    body: HealthBody


class HealthRaw(
    msgspec.Struct, tag_field="kind", tag="health", forbid_unknown_fields=True, gc=False
):
    """Any other ``/health`` line of the usual fields: a failed poll, or a body
    of another shape (kept as raw text, for the engine to judge)."""

    t: float
    node: str
    ok: bool
    body: msgspec.Raw = NO_BODY


#: One line (bytes) to a Request, Models or Health; raises on anything else.
decode_line = msgspec.json.Decoder(Request | Models | Health).decode
#: A body's raw text to plain JSON values (dict, list, str, int, float, bool, None).
decode_body = msgspec.json.Decoder().decode
#: A line that decode_line refused, when it is a ``/health`` line of the usual
#: fields (its body is then not of the documented shape); raises on anything else.
decode_health_raw = msgspec.json.Decoder(HealthRaw).decode
