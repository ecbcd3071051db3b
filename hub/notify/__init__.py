"""Notifications: rollout and node events to webhooks (JSON or Slack) and to MQTT.

:mod:`~hub.notify.config` reads ``[[notify]]``; :mod:`~hub.notify.events` builds the
typed events; :mod:`~hub.notify.watch` turns node state counts into debounced events;
:mod:`~hub.notify.deliver` delivers the store's outbox at least once; :mod:`~hub.notify.service`
wires them for ``serve``.
"""
