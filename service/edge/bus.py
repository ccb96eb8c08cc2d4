"""BusClient: the edge's one code path to the orchestrator, a DomainAction request over NATS."""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, ConnectionDrainingError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout

from orchestrator.codecs.actions import ACTIONS, Payload
from orchestrator.codecs.envelope import DomainAction
from orchestrator.codecs.errors import ActionTimeout, InternalError, Unavailable, ValidationFailed
from orchestrator.codecs.transport import error_of_reply, format_headers, format_of
from orchestrator.codecs.wire import WireFormat, decode, encode
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Subjects


class BusClient:
    """Sends actions with the context of a verified caller and returns the typed reply."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        timeout: float,
        busy_retry_initial: float,
        busy_retry_max: float,
        fmt: WireFormat = WireFormat.JSON,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout
        self._busy_initial = busy_retry_initial
        self._busy_max = busy_retry_max
        self._fmt = fmt
        self._headers = format_headers(fmt)

    @classmethod
    def for_edge(cls, nc: Client, subjects: Subjects, settings: OrchestratorSettings) -> BusClient:
        """The edge's client: JSON, with the edge's action timeout and busy retries."""
        return cls(
            nc,
            subjects,
            settings.edge_action_timeout,
            settings.edge_busy_retry_initial,
            settings.edge_busy_retry_max,
        )

    async def call(
        self,
        action_type: str,
        ctx: ExecutionContext,
        payload: Payload,
        client_id: str | None = None,
    ) -> Any:
        """Request `action_type`; the reply Struct, or the typed error the orchestrator raised.

        `client_id` is an id the client gave this request (a `chat.message` frame's `id`, an
        `Idempotency-Key` header): it becomes the envelope's `action_id`, so a repeat of the same
        `chat.send` returns the first one's task.
        """
        spec = ACTIONS[action_type]
        if not isinstance(payload, spec.payload):
            raise TypeError(f"{action_type} takes {spec.payload.__name__}, not {type(payload)}")
        # The envelope comes only from the verified context: nothing a browser sent is trusted.
        envelope = DomainAction(
            tenant_id=ctx.tenant_id,
            user_id=ctx.user_id,
            permissions=sorted(ctx.permissions),
            correlation_id=ctx.correlation_id or None,
            session_id=getattr(payload, "session_id", None),
            action_id=action_id_of(client_id) if client_id else None,
            action_type=action_type,
            data=payload,
        )
        if not self._nc.is_connected:
            # nats-py would buffer the request and send it after a reconnect, so a caller told
            # "timeout" could still see it processed later: refuse it now, unsent, instead.
            raise Unavailable("not connected to NATS")
        try:
            msg = await self._request(
                self._subjects.action(action_type), encode(envelope, self._fmt)
            )
        except NoRespondersError:
            raise Unavailable("the orchestrator is not available") from None
        except NatsTimeout:
            raise ActionTimeout(
                f"{action_type} got no reply within {self._timeout}s", {"action": action_type}
            ) from None
        except (ConnectionClosedError, ConnectionDrainingError, NatsError) as exc:
            raise Unavailable(f"NATS: {type(exc).__name__}") from None
        failure = error_of_reply(msg.headers, msg.data)
        if failure is not None:
            raise failure
        try:
            return decode(msg.data, spec.reply, format_of(msg.headers))
        except ValidationFailed as exc:
            raise InternalError(f"malformed {action_type} reply: {exc.message}") from None

    async def _request(self, subject: str, body: bytes) -> Msg:
        """One request, sent again while no instance takes it, until the action's deadline.

        "No responders" means the request reached nobody (every instance left its queue group
        because it is saturated, or none runs), so sending it again cannot run it twice.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        wait = self._busy_initial
        while True:
            try:
                return await self._nc.request(
                    subject,
                    body,
                    timeout=max(deadline - loop.time(), 0.001),
                    headers=self._headers,
                )
            except NoRespondersError:
                if loop.time() + wait >= deadline:
                    raise
                await asyncio.sleep(wait * random.uniform(0.5, 1.0))  # spread the retries out
                wait = min(wait * 2, self._busy_max)


def action_id_of(client_id: str) -> str:
    """An envelope `action_id` (an identifier) for any id string a client chose."""
    return "c-" + hashlib.sha256(client_id.encode()).hexdigest()[:40]
