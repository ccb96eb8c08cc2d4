"""docs/asyncapi.json and docs/openapi.json: what the generators produce, valid against the
official AsyncAPI 3.0 and OpenAPI 3.1 JSON Schemas (tests/specs, see its README)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest

from orchestrator.codecs.actions import ACTIONS
from orchestrator.codecs.events import SessionEvent
from orchestrator.codecs.execution_messages import StreamMessage
from orchestrator.codecs.frames import ClientMessage, WebSocketMessageType
from orchestrator.service.contracts import asyncapi_doc as asyncapi
from orchestrator.service.edge import openapi_doc

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "specs"


def official(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SPECS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


ASYNCAPI = official("asyncapi-3.0.0.json")
OPENAPI = official("openapi-3.1.json")


def errors(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize(
    ("committed", "render", "command"),
    [
        ("docs/asyncapi.json", asyncapi.render, "orchestrator.service.contracts.asyncapi_doc"),
        ("docs/openapi.json", openapi_doc.render, "orchestrator.service.edge.openapi_doc"),
    ],
)
def test_committed_documents_match_the_generators(committed, render, command):
    assert (ROOT / committed).read_text() == render(), (
        f"{committed} is out of date: run `make schemas` "
        f"(or `.venv/bin/python -m {command} {committed}`)"
    )


def test_asyncapi_document_is_valid_asyncapi_3():
    doc = asyncapi.document()
    assert doc["asyncapi"] == "3.0.0"
    assert errors(ASYNCAPI, doc) == []


def test_openapi_document_is_valid_openapi_3_1():
    doc = openapi_doc.document()
    assert doc["openapi"] == "3.1.0"
    assert errors(OPENAPI, doc) == []


def test_the_validators_refuse_a_broken_document():
    # The official schemas are live: a wrong operation action, a non-string summary are caught.
    bad = copy.deepcopy(asyncapi.document())
    bad["operations"]["chat.send"]["action"] = "publish"
    assert errors(ASYNCAPI, bad)
    bad = copy.deepcopy(openapi_doc.document())
    bad["paths"]["/api/chat/start"]["post"]["responses"]["201"]["description"] = 7
    assert errors(OPENAPI, bad)


def test_asyncapi_has_every_action_event_part_and_frame():
    doc = asyncapi.document()
    channels, operations = doc["channels"], doc["operations"]
    for action_type in ACTIONS:
        assert channels[f"action.{action_type}"]["address"] == f"nooble4.orchestrator.{action_type}"
        reply = operations[action_type]["reply"]
        assert reply["channel"] == {"$ref": f"#/channels/action.{action_type}.reply"}
    tags = {str(tp.__struct_config__.tag) for tp in get_args(SessionEvent)}
    for key in ("session.events", "session.live"):
        assert {m["name"] for m in channels[key]["messages"].values()} == tags
    assert channels["session.live"]["address"] == "nooble4.live.{session_id}"
    stream = channels["execution.stream"]
    assert stream["address"] == "nooble4.execution.stream.{task_id}.{attempt}.{nonce}"
    assert set(stream["parameters"]) == {"task_id", "attempt", "nonce"}
    parts = {str(tp.__struct_config__.tag) for tp in get_args(StreamMessage)}
    assert {m["name"] for m in stream["messages"].values()} == parts
    assert channels["execution.run"]["address"] == "nooble4.execution.chat.run"
    assert channels["execution.cancel"]["address"] == "nooble4.execution.chat.cancel"
    assert channels["control.task.cancel"]["address"] == "nooble4.control.task.cancel.{task_id}"
    frames = {m["name"] for m in channels["ws.chat"]["messages"].values()}
    assert frames == {t.value for t in WebSocketMessageType}
    sent = {ref["$ref"].rsplit("/", 1)[-1] for ref in operations["ws.chat.receive"]["messages"]}
    client = {str(tp.__struct_config__.tag) for tp in get_args(ClientMessage)}
    assert sent == {tag.replace(".", "_") for tag in client}


def test_every_operation_message_is_one_of_its_channels():
    doc = asyncapi.document()
    for name, op in doc["operations"].items():
        for part in [op, *([op["reply"]] if "reply" in op else [])]:
            channel = part["channel"]["$ref"].removeprefix("#/channels/")
            for ref in part["messages"]:
                prefix = f"#/channels/{channel}/messages/"
                assert ref["$ref"].startswith(prefix), (name, ref)
                assert ref["$ref"].removeprefix(prefix) in doc["channels"][channel]["messages"]


def test_every_schema_reference_resolves():
    for doc in (asyncapi.document(), openapi_doc.document()):
        schemas = doc["components"]["schemas"]
        refs = {ref.split('"', 1)[0] for ref in json.dumps(doc).split('"#/components/schemas/')[1:]}
        assert refs, "no schema reference found: the check would pass on nothing"
        assert refs <= set(schemas), refs - set(schemas)


def test_openapi_documents_every_action_route_with_its_reply_and_errors():
    doc = openapi_doc.document()
    op = doc["paths"]["/api/chat/sessions/{session_id}/messages"]["post"]
    assert op["security"] == [{"bearer": []}]
    assert op["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatAccepted"
    }
    assert {"400", "401", "403", "404", "409", "413", "429", "503", "504"} <= set(op["responses"])
    assert "500" not in op["responses"]
    params = {(p["in"], p["name"]) for p in op["parameters"]}
    assert params == {("path", "session_id"), ("header", "Idempotency-Key")}
    listing = doc["paths"]["/api/chat/sessions"]["get"]["parameters"]
    assert {p["name"] for p in listing} == {"cursor", "limit", "status"}
    assert doc["paths"]["/health/live"]["get"].get("security") is None
