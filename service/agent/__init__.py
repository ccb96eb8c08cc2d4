"""Execution services: the SDK, and the reference (demo) agent written on it."""

from orchestrator.service.agent.reference_agent import ReferenceAgent

__all__ = ["ReferenceAgent"]
