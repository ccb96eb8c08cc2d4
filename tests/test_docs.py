"""The documented public names are the ones the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.codecs.actions import ACTIONS
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.subjects import Subjects

ROOT = Path(__file__).resolve().parent.parent


def test_subjects_doc_lists_every_action_subject_and_endpoint():
    text = (ROOT / "docs" / "subjects.md").read_text()
    subjects = Subjects()
    for spec in ACTIONS.values():
        assert f"`{subjects.action(spec.action_type)}`" in text
        assert f"`{spec.endpoint_name}`" in text
        assert f"nats req {subjects.action(spec.action_type)} " in text
    for name in (subjects.execution_run, subjects.execution_cancel, subjects.management_agent_get):
        assert f"`{name}`" in text


def test_every_setting_is_documented_with_its_env_variable():
    text = (ROOT / "docs" / "settings.md").read_text()
    for prefix, model in (("ORCH_", OrchestratorSettings), ("ORCH_AGENT_", AgentSettings)):
        for field in model.model_fields:
            assert f"`{prefix}{field.upper()}`" in text, f"{prefix}{field.upper()} not documented"


def test_readme_opens_with_the_two_fresh_machine_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", readme, re.S)
    assert blocks[0].strip() == "make run"
    assert blocks[1].strip() == "make test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_settings_doc_is_generated_from_the_settings():
    from orchestrator.service.runtime.settings_doc import render

    assert (ROOT / "docs" / "settings.md").read_text() == render(), (
        "docs/settings.md is stale: "
        "python -m orchestrator.service.runtime.settings_doc > docs/settings.md"
    )


def test_runbook_covers_every_setting_bucket_and_stream():
    text = (ROOT / "docs" / "operations.md").read_text()
    for prefix, model in (("ORCH_", OrchestratorSettings), ("ORCH_AGENT_", AgentSettings)):
        for field in model.model_fields:
            assert f"`{prefix}{field.upper()}`" in text
    settings = OrchestratorSettings()
    for bucket in (settings.sessions_bucket, settings.tasks_bucket, settings.agent_configs_bucket):
        assert f"nats kv get {bucket}" in text
    assert "nats micro stats orchestrator" in text
    assert f"nats stream view {settings.events_stream}" in text


def test_every_setting_explains_itself():
    for model in (OrchestratorSettings, AgentSettings):
        missing = [name for name, field in model.model_fields.items() if not field.description]
        assert not missing, f"settings without a description: {missing}"
