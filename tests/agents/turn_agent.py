"""A test execution service, run as its own process: `python turn_agent.py <nats_url> [delay]`.

It speaks the real execution contract on the real subjects (queue group `execution`): it streams
its answer in 10 text parts `delay` seconds apart to `stream_subject`, with heartbeats, honours
`ExecutionCancel`, and replies an `ExecutionResult`. A message starting with `/ask` ends its
first attempt asking for input and, once answered, completes with the answer; one starting with
`/slow` streams 8 times slower (room for a cancel to land between two parts, even on a loaded
machine). It prints `OVERLAP <session>` if two turns of one session ever run at once, which the
tests look for.
"""

from __future__ import annotations

import asyncio
import sys

import nats
from support.child_main import until_terminated

from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
    Heartbeat,
    InputRequest,
    ResultStatus,
    TextPart,
)
from orchestrator.codecs.wire import decode, encode
from orchestrator.subjects import Subjects

PARTS = 10


class TurnAgent:
    def __init__(self, nc, delay: float) -> None:
        self.nc = nc
        self.delay = delay
        self.subjects = Subjects()
        self.work: dict[str, asyncio.Task] = {}
        self.active: dict[str, str] = {}

    async def start(self) -> None:
        await self.nc.subscribe(self.subjects.execution_run, "execution", cb=self.on_run)
        await self.nc.subscribe(self.subjects.execution_cancel, cb=self.on_cancel)

    async def on_cancel(self, msg) -> None:
        cancel = decode(msg.data, ExecutionCancel)
        task = self.work.get(cancel.task_id)
        if task is not None:
            task.cancel()

    async def on_run(self, msg) -> None:
        request = decode(msg.data, ExecutionRequest)
        task = asyncio.create_task(self.serve(msg, request))
        self.work[request.task_id] = task
        task.add_done_callback(lambda _: self.work.pop(request.task_id, None))

    async def serve(self, msg, request: ExecutionRequest) -> None:
        other = self.active.get(request.session_id)
        if other is not None and other != request.task_id:
            print(f"OVERLAP {request.session_id} {other} {request.task_id}", flush=True)
        self.active[request.session_id] = request.task_id
        beat = None
        if request.stream_subject and request.heartbeat_interval:
            beat = asyncio.create_task(self.heartbeat(request))
        try:
            asking = request.content.startswith("/ask") and not request.inputs
            if asking:
                text = ["may I? "]
            elif request.inputs:
                text = [f"done with {request.inputs[-1].response}"]
            else:
                text = [f"{request.content}:{i} " for i in range(PARTS)]
            delay = self.delay * (8 if request.content.startswith("/slow") else 1)
            for index, part in enumerate(text):
                if index:
                    await asyncio.sleep(delay)
                await self.publish(request, index, part)
            result = ExecutionResult(
                task_id=request.task_id, attempt=request.attempt, parts=len(text),
                content="".join(text),
                status=ResultStatus.INPUT_REQUIRED if asking else ResultStatus.COMPLETED,
                input=InputRequest(prompt="approve?", schema={"type": "string"})
                if asking else None,
            )  # fmt: skip
            await self.nc.publish(msg.reply, encode(result))
        finally:
            if beat is not None:
                beat.cancel()
            if self.active.get(request.session_id) == request.task_id:
                del self.active[request.session_id]

    async def heartbeat(self, request: ExecutionRequest) -> None:
        while True:
            beat = Heartbeat(task_id=request.task_id, attempt=request.attempt)
            await self.nc.publish(request.stream_subject, encode(beat))
            await asyncio.sleep(request.heartbeat_interval)

    async def publish(self, request: ExecutionRequest, index: int, text: str) -> None:
        part = TextPart(task_id=request.task_id, attempt=request.attempt, index=index, content=text)
        await self.nc.publish(request.stream_subject, encode(part))


async def main(url: str, delay: float) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    agent = TurnAgent(nc, delay)
    await agent.start()
    print("READY", flush=True)
    try:
        await until_terminated()
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.05))
