"""The OpenAPI document against a live edge: served as committed, covering every route, and a
schemathesis run (a real process, over HTTP) finds no 5xx and no response outside the document."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator.service.edge import openapi_doc
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Bounded: a few examples per operation, one worker, a per-request timeout and a run deadline.
MAX_EXAMPLES = 5
RUN_TIMEOUT = 150.0
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ignored_auth",
    ]
)


@pytest.fixture
async def edge(stack) -> AsyncIterator[Edge]:
    """A generous per-user rate so schemathesis' requests reach the routes, not the limiter."""
    settings = stack.settings.model_copy(update={"edge_port": 0, "user_rate": 1000.0,
                                                 "user_burst": 1000})  # fmt: skip
    edge = Edge(settings, stack.nc, stack.subjects)
    await edge.start()
    yield edge
    await edge.stop()


async def test_the_edge_serves_the_committed_document(edge):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge.url}/api/openapi.json") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            served = await resp.json()
    assert served == json.loads((ROOT / "docs" / "openapi.json").read_text())


def test_every_route_of_the_edge_is_documented_or_left_out_on_purpose(edge):
    served = set()
    for route in edge.app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        path = route.resource.canonical if route.resource is not None else ""
        if path not in openapi_doc.UNDOCUMENTED:
            served.add((route.method, path))
    documented = {(r.method, r.path) for r in openapi_doc.ROUTES}
    assert served == documented


@pytest.mark.timeout(RUN_TIMEOUT + 60)
async def test_schemathesis_finds_no_5xx_and_no_undocumented_response(edge, tmp_path):
    token = mint_token(edge.settings, "dev", "alice")
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{edge.url}{openapi_doc.OPENAPI_PATH}",
        "--checks", CHECKS,
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "15",
        "--workers", "1",
        "--request-timeout", "10",
        "--phases", "examples,coverage,fuzzing",
        "--no-shrink",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": str(SCHEMATHESIS.parent), "NO_COLOR": "1", "HOME": str(tmp_path)},
    )  # fmt: skip
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    # The run tested every operation it selected (none left out for a schema it cannot use).
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert selected is not None and len(set(selected.groups())) == 1, report[-3000:]
