"""Keys as PEM files, for the edge's JWT and TLS tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pem_pair(directory: Path, key: Any, name: str) -> tuple[Path, Path]:
    """`key` (RSA or EC) as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization

    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public
