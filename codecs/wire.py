"""Encoding and decoding: JSON by default, MessagePack when a message declares it
(`codecs/transport.py` reads and writes the declaring header)."""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from typing import Any, Final

import msgspec

from orchestrator.codecs.actions import ACTIONS
from orchestrator.codecs.envelope import DomainAction
from orchestrator.codecs.errors import ValidationFailed


class WireFormat(StrEnum):
    JSON = "application/json"
    MSGPACK = "application/msgpack"


_json_encoder: Final = msgspec.json.Encoder()
_msgpack_encoder: Final = msgspec.msgpack.Encoder()


def encode(obj: Any, fmt: WireFormat = WireFormat.JSON) -> bytes:
    """Encode with the module's reused encoders."""
    if fmt is WireFormat.MSGPACK:
        return _msgpack_encoder.encode(obj)
    return _json_encoder.encode(obj)


@cache
def _decoder(tp: Any, fmt: WireFormat) -> msgspec.json.Decoder | msgspec.msgpack.Decoder:
    if fmt is WireFormat.MSGPACK:
        return msgspec.msgpack.Decoder(tp)
    return msgspec.json.Decoder(tp)


def decode(data: bytes | str, tp: Any, fmt: WireFormat = WireFormat.JSON) -> Any:
    """Decode strictly into `tp`; any failure is a `ValidationFailed` naming the bad field."""
    try:
        return _decoder(tp, fmt).decode(data)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValidationFailed(f"malformed {fmt.name}: {exc}") from None
    except UnicodeDecodeError as exc:
        # msgspec reports a string that is not UTF-8 this way, not as a DecodeError.
        raise ValidationFailed(f"malformed {fmt.name}: invalid UTF-8 ({exc.reason})") from None
    except RecursionError:
        # msgspec gives up on deeply nested input (`[[[...]]]` where `Any` is allowed) this way.
        raise ValidationFailed(f"malformed {fmt.name}: nested too deeply") from None


def action_type_of(action_type: str) -> Any:
    """The envelope type for an action type (its decoders are built at import)."""
    return DomainAction[ACTIONS[action_type].payload]


# Build every action's decoders once, at import.
for _spec in ACTIONS.values():
    for _fmt in WireFormat:
        _decoder(action_type_of(_spec.action_type), _fmt)
