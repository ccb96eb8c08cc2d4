"""Webhooks: the body POSTed to a configured URL when a task ends or waits for input, and the job
that carries it through the durable `WEBHOOKS` queue."""

from __future__ import annotations

from datetime import datetime

import msgspec

from orchestrator.codecs.errors import ErrorBody
from orchestrator.codecs.execution_messages import InputRequest
from orchestrator.codecs.records import TaskStatus


class WebhookTaskData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The task as it stood when the webhook fired."""

    task_id: str
    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    status: TaskStatus
    attempt: int = 0
    answer: str | None = None
    error: ErrorBody | None = None
    input: InputRequest | None = None


class WebhookPayload(msgspec.Struct, kw_only=True):
    """The POST body (Standard Webhooks shape): `type` is `task.<status>`, e.g. `task.completed`,
    `task.failed`, `task.timed_out`, `task.cancelled`, `task.input_required`."""

    type: str
    timestamp: datetime
    data: WebhookTaskData


class WebhookJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One delivery waiting in the queue: `webhook_id` stays the same on every retry (the
    receiver's de-dup key, header `webhook-id`)."""

    webhook_id: str
    url: str
    payload: WebhookPayload
