"""OrchestratorClient: every DomainAction as a typed method, for internal services on the bus.

It speaks the same envelope as `nats req` (JSON, or MessagePack when asked) through the edge's
`BusClient`, so it shares its error mapping (the typed exceptions of `codecs/errors.py`) and its
handling of "no instance took it" (sent again until the deadline, which cannot run it twice).
A NATS connection with the `edge` role's grants (inbox prefix `_INBOX_edge`) suffices.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client

from orchestrator.client.session_events import SessionEvents
from orchestrator.codecs.actions import (
    DEFAULT_PERMISSIONS,
    CancelTask,
    ChatAccepted,
    CloseSession,
    EventPage,
    GetSession,
    GetSessionEvents,
    GetTask,
    ListSessions,
    RespondTask,
    SendChat,
    SessionPage,
    SessionView,
    StartSession,
    TaskView,
    UpdateSession,
)
from orchestrator.codecs.records import SessionStatus
from orchestrator.codecs.wire import WireFormat
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.edge.bus import BusClient
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Subjects


class OrchestratorClient:
    """Acts for one tenant and user; errors are raised as `OrchestratorError` subclasses.

    `settings` gives the subject prefix and the client's timeouts (`ORCH_CLIENT_*`); by default
    they are read from the environment. `wire` picks JSON (default) or MessagePack.
    """

    def __init__(
        self,
        nc: Client,
        *,
        tenant_id: str,
        user_id: str,
        permissions: Iterable[str] = DEFAULT_PERMISSIONS,
        wire: WireFormat = WireFormat.JSON,
        settings: OrchestratorSettings | None = None,
    ) -> None:
        self._settings = settings or OrchestratorSettings()
        self._nc = nc
        self._subjects = Subjects(self._settings.subject_prefix)
        self._ctx = ExecutionContext(
            tenant_id=tenant_id, user_id=user_id, permissions=frozenset(permissions)
        )
        self._owns_connection = False
        self._bus = BusClient(
            nc,
            self._subjects,
            self._settings.client_action_timeout,
            self._settings.client_busy_retry_initial,
            self._settings.client_busy_retry_max,
            wire,
        )

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        tenant_id: str,
        user_id: str,
        settings: OrchestratorSettings | None = None,
        **options: Any,
    ) -> OrchestratorClient:
        """A client on a NATS connection of its own (`options` go to `nats.connect`), closed
        with the client (`close()`, or leaving `async with`)."""
        nc = await nats.connect(servers, **options)
        client = cls(nc, tenant_id=tenant_id, user_id=user_id, settings=settings)
        client._owns_connection = True
        return client

    async def close(self) -> None:
        """Drain and close the connection if `connect` opened it; otherwise nothing."""
        if self._owns_connection and not self._nc.is_closed:
            await self._nc.drain()

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start_session(
        self, agent_id: str, metadata: dict[str, str] | None = None
    ) -> SessionView:
        """Start a session with an agent the caller may use."""
        return await self._bus.call(
            "session.start", self._ctx, StartSession(agent_id=agent_id, metadata=metadata or {})
        )

    async def get_session(self, session_id: str) -> SessionView:
        """One of the caller's sessions."""
        return await self._bus.call("session.get", self._ctx, GetSession(session_id=session_id))

    async def list_sessions(
        self, *, cursor: str | None = None, limit: int = 20, status: SessionStatus | None = None
    ) -> SessionPage:
        """A page of the caller's sessions; pass `next_cursor` back for the next one."""
        page = ListSessions(cursor=cursor, limit=limit, status=status)
        return await self._bus.call("session.list", self._ctx, page)

    async def update_session(self, session_id: str, metadata: dict[str, str]) -> SessionView:
        """Merge `metadata` into the session's (a key set to "" is removed)."""
        payload = UpdateSession(session_id=session_id, metadata=metadata)
        return await self._bus.call("session.update", self._ctx, payload)

    async def close_session(self, session_id: str, reason: str = "closed by user") -> SessionView:
        """Close a session (its event `session.closed` carries `reason`)."""
        payload = CloseSession(session_id=session_id, reason=reason)
        return await self._bus.call("session.close", self._ctx, payload)

    async def send(
        self, session_id: str, content: str, *, message_id: str | None = None
    ) -> ChatAccepted:
        """Send a user message; returns once it is durably stored.

        With `message_id` the send is idempotent: after a `timeout` or `unavailable`, send again
        with the same id and the reply is the first send's task, never a second turn.
        """
        payload = SendChat(session_id=session_id, content=content)
        return await self._bus.call("chat.send", self._ctx, payload, client_id=message_id)

    async def get_task(self, task_id: str) -> TaskView:
        """A task's status, answer, error and pending question."""
        return await self._bus.call("task.get", self._ctx, GetTask(task_id=task_id))

    async def cancel_task(self, task_id: str) -> TaskView:
        """Cancel a queued, running or waiting task (the text so far stays as a partial answer)."""
        return await self._bus.call("task.cancel", self._ctx, CancelTask(task_id=task_id))

    async def respond_task(self, task_id: str, content: str) -> TaskView:
        """Answer the question of a task in `input_required`; it runs again with the answer."""
        payload = RespondTask(task_id=task_id, content=content)
        return await self._bus.call("task.respond", self._ctx, payload)

    async def event_page(self, session_id: str, after_seq: int = 0, limit: int = 100) -> EventPage:
        """One page of stored events after `after_seq` (`events()` reads them all, then live)."""
        payload = GetSessionEvents(session_id=session_id, after_seq=after_seq, limit=limit)
        return await self._bus.call("session.events", self._ctx, payload)

    def events(self, session_id: str, after_seq: int = 0) -> SessionEvents:
        """Every event of a session after `after_seq`, then live ones, across reconnects.

        Use as `async with client.events(sid) as events: async for record in events: ...`.
        """
        return SessionEvents(
            self._nc, self._subjects, self.event_page, session_id, after_seq, self._settings
        )
