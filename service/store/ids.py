"""Identifiers: time-ordered, so keys sort by creation and list pages are stable."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def new_id() -> str:
    """26 hex characters: microseconds since the epoch, then 48 random bits."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"


def utcnow() -> datetime:
    return datetime.now(UTC)
