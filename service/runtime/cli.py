"""The `orchestrator` command: run, dev, agent, token.

Start-up either reaches "up" or exits non-zero with one line saying what is wrong and which
setting changes it; SIGINT or SIGTERM at any moment stops what was started, without a traceback.
The heavy imports happen inside `main`, after the signal handlers are in place.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from orchestrator.service.runtime import signals

if TYPE_CHECKING:
    from orchestrator.service.runtime.settings import OrchestratorSettings


def _settings(**overrides: object) -> OrchestratorSettings:
    """The settings from the environment; an invalid one ends the program with one line each."""
    from pydantic import ValidationError

    from orchestrator.service.runtime.settings import OrchestratorSettings

    try:
        return OrchestratorSettings(**overrides)
    except ValidationError as exc:
        lines = [
            f"invalid settings: ORCH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else f"invalid settings: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        sys.exit("\n".join(lines))


def _configure_logging(settings: OrchestratorSettings) -> None:
    from orchestrator.service.runtime.logs import configure_logging

    configure_logging(settings)


def _run(args: argparse.Namespace) -> None:
    from orchestrator.service.runtime.runner import Roles, run

    settings = _settings()
    _configure_logging(settings)
    roles = Roles(service=args.role in ("all", "service"), edge=args.role in ("all", "edge"))
    if roles.edge and (problems := settings.edge_problems()):
        sys.exit("\n".join(f"refusing to start: {problem}" for problem in problems))
    run(settings, roles)


def _dev(args: argparse.Namespace) -> None:
    from orchestrator.service.runtime.banner import dev_banner
    from orchestrator.service.runtime.runner import Roles, run
    from orchestrator.subjects import Role
    from orchestrator.subjects.permissions import inbox_prefix

    # Development whatever ORCH_ENV says: the dev token route and local defaults are this
    # command's, never `run`'s.
    settings = _settings(env="dev")
    _configure_logging(settings)

    async def announce(info: dict) -> None:
        edge = info["edge"]
        credentials = info.get("credentials")
        # The embedded server admits only its per-start users; `ops` is the one for people.
        login = (
            f"--user ops --password {credentials.passwords[Role.OPS]} "
            f"--inbox-prefix {inbox_prefix(Role.OPS)} "
            if credentials
            else ""
        )
        banner = dev_banner(settings, info["nats_url"], edge.url if edge else None, login)
        print(banner, flush=True)

    roles = Roles(
        service=True, edge=not args.no_edge, agent=True, seed_demo=True, dev_token_route=True
    )
    run(settings, roles, on_ready=announce, any_embedded_port=True)


def _agent(args: argparse.Namespace) -> None:
    from orchestrator.service.runtime.runner import Roles, run
    from orchestrator.service.runtime.settings import AgentSettings

    settings = _settings()
    _configure_logging(settings)
    if settings.embedded:
        sys.exit("orchestrator agent needs ORCH_NATS_URL (the bus the orchestrator uses)")
    AgentSettings()  # fail early on invalid ORCH_AGENT_* values
    run(settings, Roles(service=False, edge=False, agent=True))


def _token(args: argparse.Namespace) -> None:
    from orchestrator.service.edge.auth import mint_token

    settings = _settings()
    if settings.jwt_algorithm.startswith("HS") and settings.jwt_secret is None:
        sys.exit("orchestrator token needs ORCH_JWT_SECRET (the edge's secret) to sign with")
    permissions = args.permissions.split(",") if args.permissions else None
    print(mint_token(settings, args.tenant, args.user, permissions=permissions, ttl=args.ttl))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the service (embedded NATS when ORCH_NATS_URL is unset)")
    run.add_argument("--role", choices=("all", "service", "edge"), default="all")
    run.set_defaults(func=_run)
    dev = sub.add_parser("dev", help="embedded NATS + service + edge + reference agent + demo data")
    dev.add_argument("--no-edge", action="store_true")
    dev.set_defaults(func=_dev)
    agent = sub.add_parser("agent", help="run the reference execution service")
    agent.set_defaults(func=_agent)
    token = sub.add_parser("token", help="print a JWT signed with the configured key (dev use)")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--permissions", help="comma-separated; default: all user permissions")
    token.add_argument("--ttl", type=float, help="seconds; default ORCH_JWT_TOKEN_TTL")
    token.set_defaults(func=_token)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `orchestrator` console script."""
    signals.install()
    try:
        args = _parser().parse_args(argv)
        from orchestrator.codecs.errors import StartupFailed

        try:
            args.func(args)
        except StartupFailed as exc:
            sys.exit(f"orchestrator: {exc}")
    except KeyboardInterrupt:
        print("orchestrator: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
