"""`agent.list`: the agents a caller may start a session with, for pickers."""

from __future__ import annotations

from orchestrator.codecs.actions import AgentPage, AgentView, ListAgents
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.execution.agent_directory import AgentDirectory


class AgentActions:
    """Answers from the instance's mirror of the `agent_configs` bucket (no bucket read)."""

    def __init__(self, agents: AgentDirectory) -> None:
        self._agents = agents

    async def list(self, ctx: ExecutionContext, payload: ListAgents) -> AgentPage:
        """Enabled agents of the caller's tenant it may use, and public ones, in id order.

        Agents known only through the management subject are not listed: nothing enumerates
        them. Each page is read from memory, so a config changed between pages may be skipped
        or seen twice; the ids still come in order.
        """
        usable = sorted(
            (agent_id, config)
            for agent_id, config in self._agents.mirrored().items()
            if config.allows(ctx.tenant_id, ctx.user_id)
            and (payload.cursor is None or agent_id > payload.cursor)
        )
        page = usable[: payload.limit]
        items = [
            AgentView(
                agent_id=agent_id,
                name=config.name or agent_id,
                access=config.access,
                on_busy=config.on_busy,
            )
            for agent_id, config in page
        ]
        more = len(usable) > payload.limit
        return AgentPage(items=items, next_cursor=page[-1][0] if more else None)
