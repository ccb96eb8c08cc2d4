"""The reference execution service (`orchestrator agent`): the contract, as running code."""

from .server import AgentStats, ReferenceAgent

__all__ = ["AgentStats", "ReferenceAgent"]
