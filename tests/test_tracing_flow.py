"""One trace runs from a client's request through the orchestrator into the execution service."""

from __future__ import annotations

import nats
from conftest import wait_until
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support.calls import call, put_agent

from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.service.agent.reference_agent import ReferenceAgent
from orchestrator.service.runtime.instance import Orchestrator
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Subjects


async def test_trace_links_client_action_task_execution_and_agent(nats_server):
    settings = OrchestratorSettings(nats_url=[nats_server.url], execution_timeout=5)
    # Three tracer providers, as three processes would have: only NATS headers link them.
    client_spans, orch_spans, agent_spans = (InMemorySpanExporter() for _ in range(3))
    client_tel = Telemetry.start(settings, span_exporter=client_spans)
    orch_tel = Telemetry.start(settings, span_exporter=orch_spans)
    agent_tel = Telemetry.start(settings, span_exporter=agent_spans)
    orch_nc = await nats.connect(nats_server.url)
    agent_nc = await nats.connect(nats_server.url)
    client_nc = await nats.connect(nats_server.url)
    orchestrator = Orchestrator(orch_nc, settings, orch_tel)
    await orchestrator.start()
    agent = ReferenceAgent(agent_nc, Subjects(), AgentSettings(chunk_delay=0), agent_tel)
    await agent.start()
    try:
        await put_agent(client_nc, "demo", AgentConfig(tenant_id="dev"))
        sid = (await call(client_nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        headers: dict[str, str] = {}
        with client_tel.client_span("browser.chat", headers):
            body = (
                b'{"tenant_id":"dev","user_id":"alice","data":{"session_id":"%s","content":"hi"}}'
            )
            reply = await client_nc.request(
                "nooble4.orchestrator.chat.send", body % sid.encode(), headers=headers, timeout=5
            )
        assert b"task_id" in reply.data

        def names(exporter) -> dict:
            return {s.name: s for s in exporter.get_finished_spans()}

        async def all_exported() -> bool:
            for tel in (orch_tel, agent_tel, client_tel):
                tel.force_flush()
            return "orchestrator.task.run" in names(orch_spans) and names(agent_spans)

        await wait_until(all_exported, timeout=10, message="spans of every hop")
        client = names(client_spans)["browser.chat"]
        action = names(orch_spans)["orchestrator.chat.send"]
        task = names(orch_spans)["orchestrator.task.run"]
        request = names(orch_spans)["execution.chat.run"]
        served = names(agent_spans)["execution.chat.run"]
        trace_id = client.context.trace_id
        for span in (action, task, request, served):
            assert span.context.trace_id == trace_id
        assert action.parent.span_id == client.context.span_id
        assert task.parent.span_id == action.context.span_id
        assert request.parent.span_id == task.context.span_id
        assert request.kind is SpanKind.CLIENT
        assert served.parent.span_id == request.context.span_id
        assert served.kind is SpanKind.SERVER
    finally:
        await agent.stop()
        await orchestrator.stop()
        for nc in (orch_nc, agent_nc, client_nc):
            await nc.close()
        for tel in (client_tel, orch_tel, agent_tel):
            tel.shutdown()
