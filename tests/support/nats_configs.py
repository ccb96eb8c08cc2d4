"""The repository's nats.conf and k8s/nats/cluster.conf on real nats-servers: the config parser,
the fixtures logging in as each role, and the 3-node cluster.

Its fixtures reach every test module through `pytest_plugins` in tests/conftest.py.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from conftest import wait_until
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig

from orchestrator.service.runtime.nats_server import NatsServer, free_port
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Role, Subjects
from orchestrator.subjects.nats_conf import PASSWORD_VARS, SYS_PASSWORD_VAR
from orchestrator.subjects.permissions import inbox_prefix

REPO = Path(__file__).resolve().parents[2]
NATS_CONF = REPO / "nats.conf"
K8S = REPO / "k8s"
STORE_DIR_LINE = 'store_dir: "/data/jetstream"'
SUBJECTS = Subjects()
ECHO = SUBJECTS.action("test.echo")
DENIED_TO_ALL = "nooble4.permissions.barrier"  # no user of nats.conf may publish here


def parse_conf(text: str) -> dict:
    """The subset of the nats-server config syntax nats.conf uses: maps, arrays, scalars."""
    pos = 0

    def skip(newlines: bool = True) -> None:
        nonlocal pos
        while pos < len(text):
            char = text[pos]
            if char == "#" or text.startswith("//", pos):
                pos = text.find("\n", pos) if "\n" in text[pos:] else len(text)
            elif char in " \t\r" or (newlines and char in "\n,;"):
                pos += 1
            else:
                return

    def value() -> object:
        nonlocal pos
        char = text[pos]
        if char in "{[":
            pos += 1
            return entries("}") if char == "{" else items()
        if char in "\"'":
            end = text.index(char, pos + 1)
            pos, result = end + 1, text[pos + 1 : end]
            return result
        match = re.compile(r"[^\s,;}\]#]+").match(text, pos)
        assert match, f"unexpected {text[pos : pos + 20]!r}"
        pos = match.end()
        return match.group()

    def items() -> list:
        nonlocal pos
        result = []
        while skip() or text[pos] != "]":
            result.append(value())
        pos += 1
        return result

    def entries(end: str | None) -> dict:
        nonlocal pos
        result: dict = {}
        while skip() or (pos < len(text) and text[pos] != end):
            key = re.compile(r"[^\s:=]+").match(text, pos)
            assert key, f"no key at {text[pos : pos + 20]!r}"
            pos = key.end()
            skip(newlines=False)
            if text[pos] in ":=":
                pos += 1
            skip(newlines=False)
            result[key.group()] = value()
        pos += 1
        return result

    return entries(None)


@pytest.fixture
def passwords(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fresh passwords in the environment nats-server inherits; a leading letter keeps them text."""
    values = {
        var: f"p{secrets.token_hex(12)}" for var in (*PASSWORD_VARS.values(), SYS_PASSWORD_VAR)
    }
    for var, value in values.items():
        monkeypatch.setenv(var, value)
    return values


@pytest.fixture
def secured_server(tmp_path: Path, passwords: dict[str, str]) -> Iterator[NatsServer]:
    """nats-server running the repository's nats.conf; only the store and ports are local."""
    text = NATS_CONF.read_text()
    store = tmp_path / "jetstream"
    (tmp_path / "nats.conf").write_text(text.replace(STORE_DIR_LINE, f'store_dir: "{store}"'))
    wrapper = tmp_path / "test.conf"
    wrapper.write_text(f"include ./nats.conf\nhttp: 127.0.0.1:{free_port()}\n")
    server = NatsServer(tmp_path / "server", config_file=wrapper).start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Login:
    """A client connected as one user, with the permission errors the server sent it."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    async def publish_denied(self, subject: str) -> None:
        await self.nc.publish(subject, b"{}")
        await self._wait_error(f'publish to "{subject}"')

    async def subscribe_denied(self, subject: str, queue: str = "") -> None:
        await self.nc.subscribe(subject, queue=queue)
        await self._wait_error(f'subscription to "{subject}"')

    async def _wait_error(self, fragment: str) -> None:
        await self.nc.flush(timeout=5)
        await wait_until(
            lambda: any(fragment.lower() in error for error in self.errors),
            timeout=5,
            message=f"permissions violation for {fragment}",
        )

    async def no_errors(self) -> None:
        """No permission error so far. A flush does not prove it (nats-py hands errors to
        `error_cb` in tasks of their own, after the flush returns): a publish no role may make is
        the barrier, its error comes after any earlier one."""
        await self.publish_denied(DENIED_TO_ALL)
        assert [error for error in self.errors if DENIED_TO_ALL not in error] == []


@pytest.fixture
async def login(secured_server: NatsServer, passwords: dict[str, str]) -> AsyncIterator[object]:
    clients: list[Client] = []

    async def connect(role: Role, password: str | None = None, inbox: str | None = None) -> Login:
        result = Login(nc=None)  # type: ignore[arg-type]

        async def error_cb(exc: Exception) -> None:
            result.errors.append(str(exc).lower())

        result.nc = await nats.connect(
            secured_server.url,
            user=role.value,
            password=password or passwords[PASSWORD_VARS[role]],
            error_cb=error_cb,
            connect_timeout=2,
            allow_reconnect=False,
            inbox_prefix=inbox or inbox_prefix(role),
        )
        clients.append(result.nc)
        return result

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture
async def orchestrator(login) -> AsyncIterator[Login]:
    """The orchestrator user after creating every stream and bucket and serving one action."""
    me: Login = await login(Role.ORCHESTRATOR)
    await ensure_resources(me.nc.jetstream(timeout=5), OrchestratorSettings(), SUBJECTS)

    async def echo(request: Request) -> None:
        await request.respond(request.data)

    service = await add_service(me.nc, ServiceConfig(name=Subjects.SERVICE_NAME, version="0.0.1"))
    await service.add_endpoint(EndpointConfig(name="echo", subject=ECHO, handler=echo))
    yield me
    await service.stop()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[NatsServer]]:
    """Three nats-servers on k8s/nats/cluster.conf; names, ports, routes and stores made local."""
    for var in re.findall(r"password:\s*\$(\w+)", (REPO / "nats.conf").read_text()):
        monkeypatch.setenv(var, f"p{secrets.token_hex(12)}")
    monkeypatch.setenv("POD_NAME", "unused")
    for name in ("nats.conf", "cluster.conf"):
        (tmp_path / name).write_text((K8S / "nats" / name).read_text())
    route_ports = [free_port() for _ in range(3)]
    routes = ", ".join(f'"nats://127.0.0.1:{port}"' for port in route_ports)
    servers = []
    for i, route_port in enumerate(route_ports):
        node = tmp_path / f"nats-{i}"
        node.mkdir()
        wrapper = node / "node.conf"
        wrapper.write_text(
            "include ../cluster.conf\n"
            f"server_name: nats-{i}\n"
            f"http: 127.0.0.1:{free_port()}\n"
            f'pid_file: "{node / "nats.pid"}"\n'
            f'jetstream {{ store_dir: "{node / "js"}", max_file_store: 8GB }}\n'
            f"cluster {{ name: nooble4, listen: 127.0.0.1:{route_port}, routes: [{routes}] }}\n"
        )
        servers.append(NatsServer(node, config_file=wrapper))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()
