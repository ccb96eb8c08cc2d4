"""docs/execution.md: each copy-paste message is what the code decodes; each name it uses exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator.codecs.errors import ErrorEnvelope
from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
    Heartbeat,
    StreamMessage,
)
from orchestrator.codecs.wire import decode
from orchestrator.service.agent.sdk import RUN_ENDPOINT, SERVICE_PREFIX
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.subjects import Subjects
from orchestrator.subjects.permissions import EXECUTION_QUEUE

DOC = Path(__file__).resolve().parent.parent / "docs" / "execution.md"


def json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)


def test_every_json_example_decodes_strictly_as_the_message_it_shows():
    seen: set[type] = set()
    for block in json_blocks():
        documents = [block] if block.lstrip().startswith("{\n") else block.strip().splitlines()
        if len(documents) > 1 and not documents[0].endswith("}"):
            documents = [block]  # one message wrapped over several lines
        for text in documents:
            value = json.loads(text)
            if "stream_subject" in value:
                kind = ExecutionRequest
            elif "error" in value:
                kind = ErrorEnvelope
            elif "type" in value:
                kind = StreamMessage
            elif "status" in value:
                kind = ExecutionResult
            else:
                kind = ExecutionCancel
            message = decode(text.encode(), kind)
            seen.add(type(message))
    assert {ExecutionRequest, ErrorEnvelope, ExecutionResult, ExecutionCancel, Heartbeat} <= seen
    assert len(seen) == 8, seen  # and the three part types


def test_the_subjects_queue_group_service_name_and_settings_it_names_exist():
    text = DOC.read_text()
    subjects = Subjects()
    for name in (subjects.execution_run, subjects.execution_cancel, EXECUTION_QUEUE):
        assert f"`{name}`" in text or f"**`{name}`**" in text
    assert f"`{SERVICE_PREFIX}<kind>`" in text
    assert f"endpoint `{RUN_ENDPOINT}`" in text
    known = {f"ORCH_{f.upper()}" for f in OrchestratorSettings.model_fields}
    known |= {f"ORCH_AGENT_{f.upper()}" for f in AgentSettings.model_fields}
    named = set(re.findall(r"\bORCH_[A-Z_]+[A-Z]", text)) - {"ORCH_AGENT"}
    assert named <= known, f"not settings: {sorted(named - known)}"
