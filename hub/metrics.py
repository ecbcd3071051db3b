"""The hub's Prometheus metrics in the text exposition format."""

from __future__ import annotations

from hub.ingest import DROP_REASONS, IngestCounters
from hub.shapes import Summary


def prometheus_text(c: IngestCounters, mqtt_connected: bool, summary: Summary) -> str:
    lines = [
        "# HELP edgefleet_hub_messages_received_total MQTT messages received, by topic kind.",
        "# TYPE edgefleet_hub_messages_received_total counter",
        *(f'edgefleet_hub_messages_received_total{{kind="{k}"}} {c.received[k]}'
          for k in ("status", "online", "events", "unknown")),
        "# HELP edgefleet_hub_messages_dropped_total Messages dropped as invalid, by reason.",
        "# TYPE edgefleet_hub_messages_dropped_total counter",
        *(f'edgefleet_hub_messages_dropped_total{{reason="{r}"}} {c.dropped[r]}'
          for r in DROP_REASONS),
        "# HELP edgefleet_hub_messages_committed_total Valid messages committed, then acked.",
        "# TYPE edgefleet_hub_messages_committed_total counter",
        f"edgefleet_hub_messages_committed_total {c.committed}",
        "# HELP edgefleet_hub_rows_stored_total Rows written, by kind.",
        "# TYPE edgefleet_hub_rows_stored_total counter",
        *(f'edgefleet_hub_rows_stored_total{{kind="{k}"}} {c.stored[k]}'
          for k in ("status", "heartbeat", "online", "events")),
        "# HELP edgefleet_hub_status_out_of_order_total Statuses older than the stored one.",
        "# TYPE edgefleet_hub_status_out_of_order_total counter",
        f"edgefleet_hub_status_out_of_order_total {c.status_out_of_order}",
        "# HELP edgefleet_hub_events_duplicate_total Events already stored (same node and seq).",
        "# TYPE edgefleet_hub_events_duplicate_total counter",
        f"edgefleet_hub_events_duplicate_total {c.events_duplicate}",
        "# HELP edgefleet_hub_batches_total Ingest transactions committed.",
        "# TYPE edgefleet_hub_batches_total counter",
        f"edgefleet_hub_batches_total {c.batches}",
        "# HELP edgefleet_hub_batch_errors_total Ingest transactions that failed (retried).",
        "# TYPE edgefleet_hub_batch_errors_total counter",
        f"edgefleet_hub_batch_errors_total {c.batch_errors}",
        "# HELP edgefleet_hub_last_batch_seconds Duration of the last ingest transaction.",
        "# TYPE edgefleet_hub_last_batch_seconds gauge",
        f"edgefleet_hub_last_batch_seconds {c.last_batch_seconds:.6f}",
        "# HELP edgefleet_hub_mqtt_connected 1 while connected and subscribed.",
        "# TYPE edgefleet_hub_mqtt_connected gauge",
        f"edgefleet_hub_mqtt_connected {int(mqtt_connected)}",
        "# HELP edgefleet_hub_nodes Nodes by effective state.",
        "# TYPE edgefleet_hub_nodes gauge",
        *(f'edgefleet_hub_nodes{{state="{s}"}} {n}' for s, n in summary["states"].items()),
        "# HELP edgefleet_hub_stage_nodes Nodes by stage and effective state.",
        "# TYPE edgefleet_hub_stage_nodes gauge",
        *(f'edgefleet_hub_stage_nodes{{stage="{name}",state="{s}"}} {n}'
          for name, st in summary["stages"].items() for s, n in st["states"].items()),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"
