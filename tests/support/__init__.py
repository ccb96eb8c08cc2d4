"""Test helpers, one concern per module (imported as `support.<module>`: pytest puts tests/ on
the path).

- calls: a DomainAction sent over the bus as any client would, its reply, the Python client.
- stack: the orchestrator and the reference agent in this process on a real nats-server.
- processes: `orchestrator run` as a child process, its edge's readiness and memory.
- chat_load: many users chatting, and the checks that nothing acknowledged was lost.
- certificates: keys as PEM files.
- nats_configs: the repository's nats.conf and k8s cluster config on real nats-servers.
- child_process: any helper program as a child process: ready line, SIGTERM, kill -9.
- programs: the test programs (SDK test agent, flaky agent, turn agent, model-server stand-in)
  on child_process; child_main: what those programs end their `main` with.

Waiting is `conftest.wait_until` (or an event), never a sleep; a "nothing happened" check needs a
positive barrier after it (e.g. `nats_configs.Login.no_errors`).
"""
