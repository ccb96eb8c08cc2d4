"""A caller's side of the execution contract for tests: requests with a fresh stream subject,
and what arrives on that subject."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from conftest import wait_until
from nats.aio.client import Client
from nats.aio.msg import Msg

from orchestrator.codecs.execution_messages import (
    ExecutionAgent,
    ExecutionRequest,
    ExecutionResult,
    Heartbeat,
    InputRound,
    StreamMessage,
    TextPart,
)
from orchestrator.codecs.wire import WireFormat, decode, encode
from orchestrator.subjects import Subjects

SUBJECTS = Subjects()


def request_for(
    task_id: str,
    content: str,
    attempt: int = 1,
    heartbeat: float = 0.0,
    inputs: list[InputRound] | None = None,
) -> ExecutionRequest:
    """A request as the orchestrator sends it, with a fresh stream subject for the attempt."""
    return ExecutionRequest(
        task_id=task_id,
        attempt=attempt,
        session_id="s1",
        tenant_id="t1",
        user_id="u1",
        agent_id="tester",
        agent=ExecutionAgent(name="Tester"),
        content=content,
        inputs=inputs or [],
        stream_subject=SUBJECTS.execution_stream(task_id, attempt, secrets.token_hex(8)),
        heartbeat_interval=heartbeat,
    )


@dataclass
class Stream:
    """What arrived on one attempt's stream subject."""

    messages: list[StreamMessage] = field(default_factory=list)

    @property
    def parts(self) -> list[StreamMessage]:
        return [m for m in self.messages if not isinstance(m, Heartbeat)]

    @property
    def heartbeats(self) -> list[Heartbeat]:
        return [m for m in self.messages if isinstance(m, Heartbeat)]

    @property
    def text(self) -> str:
        return "".join(p.content for p in self.parts if isinstance(p, TextPart))


async def listen(nc: Client, request: ExecutionRequest) -> Stream:
    stream = Stream()

    async def on_message(msg: Msg) -> None:
        stream.messages.append(decode(msg.data, StreamMessage))

    await nc.subscribe(request.stream_subject, cb=on_message)
    return stream


async def run(nc: Client, request: ExecutionRequest, fmt: WireFormat = WireFormat.JSON):
    """Send one attempt; the reply message and the stream, holding every part the reply counts."""
    stream = await listen(nc, request)
    headers = {"Content-Type": fmt.value} if fmt is WireFormat.MSGPACK else None
    reply = await nc.request(SUBJECTS.execution_run, encode(request, fmt), 10, headers=headers)
    if "Nats-Service-Error-Code" not in (reply.headers or {}):
        result = decode(reply.data, ExecutionResult, fmt)
        await wait_until(lambda: len(stream.parts) >= result.parts, message="the counted parts")
    return reply, stream


async def result_of(nc: Client, request: ExecutionRequest) -> tuple[ExecutionResult, Stream]:
    reply, stream = await run(nc, request)
    return decode(reply.data, ExecutionResult), stream
