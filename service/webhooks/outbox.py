"""WebhookOutbox: queues a webhook when a task ends or waits for input, without ever failing it.

The job goes to the work-queue stream `WEBHOOKS` with the `task.status` event's de-dup id as its
`Nats-Msg-Id`, so whoever writes that event again (see `store/task_events.py`) queues the job
again harmlessly: a crash between the two writes delays a webhook, never loses it. A job that
cannot be queued (JetStream away, the queue full) is logged and dropped: a webhook never holds
up or refuses a chat.
"""

from __future__ import annotations

from loguru import logger
from nats.errors import Error as NatsError

from orchestrator.codecs.records import TaskStatus
from orchestrator.codecs.transport import MSG_ID_HEADER
from orchestrator.codecs.webhooks import WebhookJob, WebhookPayload, WebhookTaskData
from orchestrator.codecs.wire import encode
from orchestrator.service.execution.agent_directory import AgentDirectory
from orchestrator.service.runtime.settings import origin_of
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.task_events import StatusWritten

WEBHOOK_STATUSES = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.TIMED_OUT,
        TaskStatus.CANCELLED,
        TaskStatus.INPUT_REQUIRED,
    }
)


class WebhookOutbox:
    """Knows which agent wants webhooks (the in-memory agent mirror) and queues their jobs."""

    def __init__(self, wiring: Wiring, agents: AgentDirectory) -> None:
        settings = wiring.settings
        self._js = wiring.js
        self._subjects = wiring.subjects
        self._stream = settings.webhooks_stream
        self._allowed = frozenset(o.rstrip("/") for o in settings.webhook_allowed_origins)
        self._agents = agents

    async def task_changed(self, change: StatusWritten) -> None:
        """Queue the webhook of this change, if the task's agent has one it may receive."""
        task, status, error = change.task, change.status, change.error
        if status not in WEBHOOK_STATUSES:
            return
        config = self._agents.cached(task.agent_id)
        url = config.webhook_url if config is not None else None
        if not url:
            return
        if origin_of(url) not in self._allowed:
            logger.warning(
                "agent {} webhook_url is not in ORCH_WEBHOOK_ALLOWED_ORIGINS; not sent",
                task.agent_id,
            )
            return
        data = WebhookTaskData(
            task_id=task.task_id, session_id=task.session_id, tenant_id=task.tenant_id,
            user_id=task.user_id, agent_id=task.agent_id, status=status, attempt=task.attempt,
            answer=task.answer if status is not TaskStatus.INPUT_REQUIRED else None,
            error=error, input=task.input if status is TaskStatus.INPUT_REQUIRED else None,
        )  # fmt: skip
        payload = WebhookPayload(type=f"task.{status.value}", timestamp=change.at, data=data)
        job = WebhookJob(webhook_id=f"msg_{change.event_id}", url=url, payload=payload)
        try:
            await self._js.publish(
                self._subjects.webhook(task.tenant_id),
                encode(job),
                stream=self._stream,
                headers={MSG_ID_HEADER: change.event_id},
            )
        except (NatsError, TimeoutError) as exc:
            logger.error("webhook of task {} ({}) not queued: {!r}", task.task_id, status, exc)
