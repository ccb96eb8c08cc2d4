"""Test helpers, one concern per module (imported as `support.<module>`: pytest puts tests/ on
the path).

- calls: a DomainAction sent over the bus as any client would, its reply, the Python client.
- stack: the orchestrator and the reference agent in this process on a real nats-server.
- processes: `orchestrator run` as a child process, its edge's readiness and memory.
- chat_load: many users chatting, and the checks that nothing acknowledged was lost.
- certificates: keys as PEM files.
- nats_configs: the repository's nats.conf and k8s cluster config on real nats-servers.
"""
