"""Constrained scalar types shared by every wire Struct."""

from __future__ import annotations

from typing import Annotated

import msgspec

IDENTIFIER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Ids end up in KV keys and subject tokens, so they are limited to characters valid in both."""
Identifier = Annotated[
    str,
    msgspec.Meta(
        pattern=IDENTIFIER_PATTERN,
        description="1-64 characters: letters, digits, '_' and '-'",
    ),
]
MetadataValue = Annotated[str, msgspec.Meta(max_length=1024)]
Metadata = Annotated[dict[Identifier, MetadataValue], msgspec.Meta(max_length=32)]
Permission = Annotated[str, msgspec.Meta(pattern=r"^[a-z_*]+(:[a-z_*]+)?$", max_length=64)]
Cursor = Annotated[str, msgspec.Meta(max_length=256)]
Content = Annotated[str, msgspec.Meta(min_length=1)]
