"""edgefleet agent: pulls its own branch/path from Git and reconciles this node."""

__version__ = "0.1.0"
