"""`orchestrator.client`: a typed asyncio client for services on the bus (see README)."""

from orchestrator.client.orchestrator_client import OrchestratorClient
from orchestrator.client.session_events import SessionEvents

__all__ = ["OrchestratorClient", "SessionEvents"]
