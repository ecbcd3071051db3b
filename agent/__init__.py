"""edgefleet agent: pulls its own branch/path from Git and reconciles this node."""

__version__ = "0.2.0"
