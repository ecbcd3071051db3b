"""What the agent and the hub share: the wire contract, config reading, the MQTT and Git clients.

Both ``agent`` and ``hub`` import this package; it imports neither (tests/test_layers.py).
"""
