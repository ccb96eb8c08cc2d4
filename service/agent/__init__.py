"""The reference execution service (`orchestrator agent`): the contract, as running code."""

from .server import AgentStats, ReferenceAgent, run_agent

__all__ = ["AgentStats", "ReferenceAgent", "run_agent"]
