"""AsyncAPI 3.0 document of every channel, generated from the codecs and the subject names.

`python -m orchestrator.service.contracts.asyncapi_doc docs/asyncapi.json` writes it; a test
checks that the committed file equals what this module generates and that it validates against
the official AsyncAPI 3.0 JSON Schema. It describes the deployment as one application
(orchestrator instances and edges): the DomainActions it serves with their replies, the session
events it stores and republishes live, the execution requests, cancels and stream parts it
exchanges with execution services, the cancel fan-out between instances, its work queues and the
edge's WebSocket frames. Every payload is the msgspec JSON Schema of the Struct that decodes it
(`components.schemas`). The channels are in `asyncapi_channels.py`; this module assembles them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from orchestrator.codecs.schema import normalise
from orchestrator.service.contracts.asyncapi_channels import (
    ChannelTable,
    nats_channels,
    websocket_channel,
)
from orchestrator.service.contracts.asyncapi_parts import asyncapi_schema
from orchestrator.subjects.names import Subjects

VERSION = "0.1.0"
PREFIX = "nooble4"
_REF = "#/components/schemas/{name}"


def document() -> dict[str, Any]:
    """The whole AsyncAPI 3.0 document as a dict."""
    t = ChannelTable()
    nats_channels(t, Subjects(PREFIX))
    websocket_channel(t)
    schemas, components = msgspec.json.schema_components(t.builder.types, ref_template=_REF)
    doc = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Nooble4 Agent Orchestrator",
            "version": VERSION,
            "description": "Every NATS channel of the orchestrator and the edge's WebSocket. "
            f"Subjects are shown under the default prefix `{PREFIX}` (ORCH_SUBJECT_PREFIX).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The deployment's NATS (JetStream enabled).",
            },
            "edge": {
                "host": "localhost:8080",
                "protocol": "ws",
                "description": "An edge (ORCH_EDGE_HOST, ORCH_EDGE_PORT).",
            },
        },
        "channels": t.builder.resolve(t.channels, tuple(schemas)),
        "operations": t.operations,
        "components": {"schemas": dict(sorted(components.items()))},
    }
    return asyncapi_schema(normalise(doc))


def render() -> str:
    """The document as committed: sorted keys, two-space indent."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asyncapi.json")
    target.write_text(render())
    print(target)
