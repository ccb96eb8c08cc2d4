"""Every subject name, built and parsed in one place, with the roles that may use it."""

from orchestrator.subjects.names import Role, SubjectError, Subjects

__all__ = ["Role", "SubjectError", "Subjects"]
