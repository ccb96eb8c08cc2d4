"""The reference execution service (`orchestrator agent`): the contract, as running code."""

from orchestrator.service.agent.reference_agent import AgentStats, ReferenceAgent

__all__ = ["AgentStats", "ReferenceAgent"]
