"""The JSON Schemas in docs/schemas are exactly what the codecs generate."""

from __future__ import annotations

from pathlib import Path

from orchestrator.codecs.schema import generate, normalise

DOCS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def test_committed_schemas_match_the_codecs():
    expected = generate()
    committed = {p.name: p.read_text() for p in DOCS.glob("*.json")}
    stale = sorted(name for name in expected if committed.get(name) != expected[name])
    extra = sorted(set(committed) - set(expected))
    assert not stale and not extra, (
        f"docs/schemas is out of date (run `make schemas`): stale={stale} extra={extra}"
    )


def test_every_action_has_a_schema_for_request_and_reply():
    names = generate()
    assert "action.session.start.json" in names and "reply.chat.send.json" in names
    assert "event.json" in names and "error.json" in names


def test_docstrings_are_normalised_whatever_msgspec_does_with_them():
    # msgspec < 0.23 kept a docstring's indentation, 0.23 dedents it: the committed schemas must
    # not depend on which one is installed, so schema.py cleans every description itself.
    raw = {
        "$defs": {
            "Thing": {
                "description": "One line.\n\n    Indented body\n      deeper.\n    ",
                "properties": {"x": {"anyOf": [{"description": "  padded"}]}},
            }
        },
        "description": "Top.",
    }
    clean = normalise(raw)
    assert clean["$defs"]["Thing"]["description"] == "One line.\n\nIndented body\n  deeper."
    assert clean["$defs"]["Thing"]["properties"]["x"]["anyOf"][0]["description"] == "padded"
    assert clean["description"] == "Top."
