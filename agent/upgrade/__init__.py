"""Upgrading the agent itself: imported only when a commit pins another agent version."""
