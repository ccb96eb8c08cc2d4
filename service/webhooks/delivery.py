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

import time

import aiohttp
from loguru import logger
from nats.aio.msg import Msg

from orchestrator.codecs.webhooks import WebhookJob
from orchestrator.codecs.wire import encode
from orchestrator.service.runtime.settings import origin_of
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.pull_consumer import PullConsumer, PullSpec
from orchestrator.service.webhooks.signature import secret_key, signed_headers

CONSUMER = "webhooks"


class WebhookDelivery:
    """Pulls webhook jobs and delivers them, `ORCH_WEBHOOK_CONCURRENCY` at a time."""

    def __init__(self, wiring: Wiring) -> None:
        settings, subjects = wiring.settings, wiring.subjects
        self._settings = settings
        self._allowed = frozenset(o.rstrip("/") for o in settings.webhook_allowed_origins)
        self._http: aiohttp.ClientSession | None = None
        spec = PullSpec(
            "webhook-delivery", settings.webhooks_stream, CONSUMER, subjects.webhooks_all,
            # Only an instance that died mid-POST lets a job wait this long for another one.
            ack_wait=settings.webhook_timeout * 2,  # attempts are counted here
            concurrency=settings.webhook_concurrency, batch=settings.webhook_concurrency,
            kind=WebhookJob,
        )  # fmt: skip
        self._consumer = PullConsumer(wiring.js, spec, settings, self._deliver)
        self.delivered = 0

    async def start(self, supervisor: Supervisor) -> None:
        # No proxy from the environment, no cookies: a webhook goes straight to its URL.
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._settings.webhook_timeout),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        await self._consumer.start(supervisor)

    async def stop(self, grace: float) -> None:
        """Stop pulling; POSTs still running after `grace` seconds are redelivered later."""
        await self._consumer.stop(grace)
        if self._http is not None:
            await self._http.close()

    async def _deliver(self, msg: Msg, job: WebhookJob) -> None:
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
