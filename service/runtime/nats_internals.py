"""The only module that touches nats-py's private attributes; nothing else may.

nats-py has no public API for what these do (micro endpoint statistics of work that outlives the
handler, the reply subject of a micro request, an endpoint's subscription, a KV bucket's stream,
which subscription a slow-consumer drop hit, a flush that waits for what was sent before it),
so each use is a small function here, and `tests/test_nats_internals.py` exercises every one of
them against a real server: an upgrade that renames or reshapes one fails that test, not
production.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.micro.request import Request
from nats.micro.service import Endpoint, Service

from orchestrator.subjects import Subjects


def reply_subject(request: Request) -> str:
    """Where the requester waits for the answer ("" if it did not ask for one)."""
    return request._msg.reply or ""


def endpoints_by_name(service: Service) -> dict[str, Endpoint]:
    """The service's endpoints by their configured name."""
    return {endpoint._name: endpoint for endpoint in service._endpoints}


def record_processing(endpoint: Endpoint, elapsed_ns: int) -> None:
    """Add work done after the handler returned to the endpoint's micro STATS."""
    endpoint._processing_time += elapsed_ns
    endpoint._average_processing_time = endpoint._processing_time // max(endpoint._num_requests, 1)


def record_endpoint_error(endpoint: Endpoint, last_error: str) -> None:
    """Count an error of work that outlived the handler in the endpoint's micro STATS."""
    endpoint._num_errors += 1
    endpoint._last_error = last_error


def endpoint_subscription(endpoint: Endpoint) -> Subscription | None:
    """The subscription the endpoint receives requests on."""
    return endpoint._subscription


async def resubscribe_endpoint(
    nc: Client, endpoint: Endpoint, pending_msgs: int, pending_bytes: int
) -> Subscription:
    """Give the endpoint a new subscription (same subject, queue group and micro callback, so
    STATS keep counting) with these pending limits; the caller deals with the old one."""
    sub = await nc.subscribe(
        endpoint._subject,
        queue=endpoint._queue_group,
        cb=endpoint._handle_request,
        pending_msgs_limit=pending_msgs,
        pending_bytes_limit=pending_bytes,
    )
    endpoint._subscription = sub
    return sub


def kv_stream(kv: KeyValue) -> tuple[JetStreamContext, str, str]:
    """The bucket's JetStream context, stream name and subject prefix (`$KV.<bucket>.`)."""
    return kv._js, kv._stream, Subjects.kv_prefix(kv._name)


def on_slow_consumer(nc: Client, listener: Callable[[Subscription], bool]) -> None:
    """Call `listener(sub)` for each message nats-py drops because `sub` reached its pending
    limits. nats-py tells only the connection's error callback (kept in a private attribute);
    that callback still hears every drop the listener does not claim (returns False for)."""
    previous = nc._error_cb

    async def error_cb(exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError) and exc.sub is not None and listener(exc.sub):
            return
        await previous(exc)

    nc._error_cb = error_cb


async def flush_in_order(nc: Client, timeout: float = 10.0) -> None:
    """Return once the server has processed every command this connection sent before the call
    (a SUB it must know about, publishes another connection must not overtake).

    `nc.flush()` alone does not promise that: nats-py writes its PING straight to the socket,
    ahead of commands still in its pending buffer, so the PONG can come back before the server
    read them (measured: a later publish on another connection overtook flushed ones in ~4% of
    rounds). Handing the buffer to the socket first puts the PING behind them.
    """
    await nc._flush_pending(force_flush=True)
    await nc.flush(timeout)
