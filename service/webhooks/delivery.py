"""WebhookDelivery: sends queued webhooks, at least once, with retries and backoff.

Any instance takes jobs from the durable consumer `webhooks` of the `WEBHOOKS` work queue and
POSTs each, signed, to its URL. A 2xx answer acknowledges the job; anything else (another status,
a refused connection, no answer within `ORCH_WEBHOOK_TIMEOUT`) puts it back with a growing delay
(`ORCH_WEBHOOK_BACKOFF_INITIAL` doubling up to `_MAX`) until `ORCH_WEBHOOK_MAX_ATTEMPTS`, after
which it is logged and dropped. An instance that dies mid-POST leaves the job unacknowledged;
JetStream gives it to another instance after the ack wait. Redirects are not followed and the
URL's origin must be in `ORCH_WEBHOOK_ALLOWED_ORIGINS` when it is sent (an SSRF guard: a webhook
reaches only what the operator listed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from loguru import logger
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from orchestrator.codecs.errors import ValidationFailed
from orchestrator.codecs.webhooks import WebhookJob
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.runtime.settings import OrchestratorSettings, origin_of
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.webhooks.signature import secret_key, signed_headers
from orchestrator.subjects import Subjects

CONSUMER = "webhooks"


class WebhookDelivery:
    """Pulls webhook jobs and delivers them, `ORCH_WEBHOOK_CONCURRENCY` at a time."""

    def __init__(
        self, js: JetStreamContext, subjects: Subjects, settings: OrchestratorSettings
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._settings = settings
        self._allowed = frozenset(o.rstrip("/") for o in settings.webhook_allowed_origins)
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._inflight: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None
        self._psub = None
        self._loop_task: asyncio.Task | None = None
        self.delivered = 0

    async def start(self, supervisor: Supervisor) -> None:
        s = self._settings
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            # Only an instance that died mid-POST lets a job wait this long for another one.
            ack_wait=s.webhook_timeout * 2,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,  # attempts are counted here, so a give-up is logged
            max_ack_pending=-1,
            filter_subject=self._subjects.webhooks_all,
        )
        self._psub = await self._js.pull_subscribe(
            self._subjects.webhooks_all, durable=CONSUMER, stream=s.webhooks_stream, config=config
        )
        # No proxy from the environment, no cookies: a webhook goes straight to its URL.
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.webhook_timeout),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._loop_task = supervisor.run("webhook-delivery", self._pull_forever)

    async def stop(self, grace: float) -> None:
        """Stop pulling; POSTs still running after `grace` seconds are redelivered later."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._psub is not None:
            with contextlib.suppress(NatsError):
                await self._psub.unsubscribe()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _pull_forever(self) -> None:
        s = self._settings
        while True:
            await self._slots.acquire()
            batch = 1
            while batch < s.webhook_concurrency and not self._slots.locked():
                await self._slots.acquire()
                batch += 1
            try:
                msgs = await self._psub.fetch(batch, timeout=s.task_fetch_wait)
            except (TimeoutError, NatsTimeout):
                msgs = []
            except NatsError as exc:
                msgs = []
                logger.warning("webhook fetch failed: {}", exc)
                await asyncio.sleep(s.nats_reconnect_wait)
            for _ in range(batch - len(msgs)):
                self._slots.release()
            for msg in msgs:
                task = asyncio.create_task(self._process(msg))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _process(self, msg: Msg) -> None:
        try:
            await self._deliver(msg)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - outermost boundary of one delivery
            logger.exception("webhook delivery failed unexpectedly; JetStream will redeliver it")
        finally:
            self._slots.release()

    async def _deliver(self, msg: Msg) -> None:
        try:
            job = decode(msg.data, WebhookJob)
        except ValidationFailed as exc:
            logger.error("malformed webhook job dropped: {}", exc.message)
            await msg.term()
            return
        tenant = job.payload.data.tenant_id
        if origin_of(job.url) not in self._allowed:
            logger.error("webhook {} to a URL outside the allowed origins dropped", job.webhook_id)
            await msg.term()
            return
        secret = self._settings.webhook_tenant_secrets.get(tenant) or self._settings.webhook_secret
        if secret is None:
            logger.error(
                "webhook {}: no signing secret for tenant {}; dropped", job.webhook_id, tenant
            )
            await msg.term()
            return
        body = encode(job.payload)
        headers = signed_headers(
            secret_key(secret.get_secret_value()), job.webhook_id, int(time.time()), body
        )
        attempt = msg.metadata.num_delivered
        try:
            async with self._http.post(
                job.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                outcome = f"HTTP {resp.status}"
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome, ok = type(exc).__name__, False
        if ok:
            self.delivered += 1
            await msg.ack()
            return
        s = self._settings
        if attempt >= s.webhook_max_attempts:
            logger.error(
                "webhook {} to {} given up after {} attempts (last: {})",
                job.webhook_id, origin_of(job.url), attempt, outcome,
            )  # fmt: skip
            await msg.term()
            return
        delay = min(s.webhook_backoff_initial * 2 ** (attempt - 1), s.webhook_backoff_max)
        logger.info(
            "webhook {} attempt {} failed ({}); again in {:.1f}s",
            job.webhook_id, attempt, outcome, delay,
        )  # fmt: skip
        await msg.nak(delay=delay)
