"""A real webhook receiver process for the tests: an HTTP server that checks every signature.

`python tests/webhook_receiver.py PORT SECRET OUT` listens on 127.0.0.1:PORT and verifies each
POST the way the Standard Webhooks specification tells receivers to (its own HMAC code, not the
orchestrator's): `webhook-signature` must hold `v1,<base64 HMAC-SHA256 of id.timestamp.body>`
under the key `whsec_<base64>` decodes to, and `webhook-timestamp` must be within five minutes.
A verified delivery is appended to OUT as one JSON line `{"id", "body"}` and answered 204; any
other request gets 401 and is appended as `{"rejected": reason}`. It runs until stopped, and can be
started again on the same port (`Receiver` in tests/test_webhooks.py runs it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time

from aiohttp import web

TOLERANCE = 300


def main(port: int, secret: str, out: str) -> None:
    key = base64.b64decode(secret.removeprefix("whsec_"))

    def record(entry: dict) -> None:
        with open(out, "a") as f:
            f.write(json.dumps(entry) + "\n")

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE:
            record({"rejected": "missing id or stale timestamp"})
            return web.Response(status=401)
        mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        expected = base64.b64encode(mac).decode()
        offered = [
            sig.split(",", 1)[1]
            for sig in request.headers.get("webhook-signature", "").split(" ")
            if sig.startswith("v1,")
        ]
        if not any(hmac.compare_digest(expected, sig) for sig in offered):
            record({"rejected": "bad signature"})
            return web.Response(status=401)
        record({"id": msg_id, "body": json.loads(body)})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", hook)
    # aiohttp prints "Running on <url>" once it listens: the tests wait for that line.
    web.run_app(app, host="127.0.0.1", port=port, print=lambda text: print(text, flush=True),
                access_log=None)  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
