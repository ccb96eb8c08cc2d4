"""Identifiers (time-ordered, so keys sort by creation and list pages are stable) and the KV keys
built from them."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def new_id() -> str:
    """26 hex characters: microseconds since the epoch, then 48 random bits."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def owned_key(tenant_id: str, user_id: str, name: str) -> str:
    """The KV key of what one user owns (a session, a task, a session's history or slot).

    The owner leads, so `owned_key(t, u, "*")` filters one user's keys and `owned_key(t, "*", "*")`
    one tenant's. Every token is an identifier (codecs/types.py), so no token holds a dot.
    """
    return f"{tenant_id}.{user_id}.{name}"


def parse_owned_key(key: str) -> tuple[str, str, str] | None:
    """(tenant_id, user_id, name) of a key `owned_key` built, or None for any other key."""
    parts = key.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]
