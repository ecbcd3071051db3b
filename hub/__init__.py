"""edgefleet hub: fleet-wide status, drift and staged rollouts."""
