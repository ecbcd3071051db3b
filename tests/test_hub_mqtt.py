"""The hub's MQTT client against real brokers: password, TLS, 3.1.1, broker restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.testbed.hubproc import HubProc, Publisher, status_doc
from tests.testbed.mosquitto import Mosquitto


def nodes(hub: HubProc) -> int:
    return int(hub.get("/api/v1/summary")["nodes"])


def test_password_auth_good_and_bad(
    hub_on: Callable[..., HubProc], mosquitto_auth: Mosquitto, tmp_path: Path
) -> None:
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("hubpw\n")
    bad.write_text("wrong\n")
    refused = hub_on(
        mosquitto_auth, start=False, mqtt_extra=f'username = "hub"\npassword_file = "{bad}"\n'
    )
    refused.start(wait=False)
    refused.wait_for(lambda: "unavailable" in refused.log_text())
    assert refused.try_get("/api/v1/health") == {"mqtt": "disconnected", "last_commit_at": None}

    hub = hub_on(mosquitto_auth, mqtt_extra=f'username = "hub"\npassword_file = "{good}"\n')
    pub = Publisher(mosquitto_auth, user=("node1", "secret1")).connect(mosquitto_auth)
    try:
        pub.status(status_doc("n1", 1))
        hub.wait_for(lambda: nodes(hub) == 1)
    finally:
        pub.close()
    assert refused.log_text().count("unavailable") == 1  # logged once, not per retry


def test_tls_with_private_ca(hub_on: Callable[..., HubProc], mosquitto_tls: Mosquitto) -> None:
    assert mosquitto_tls.tls is not None
    hub = hub_on(mosquitto_tls, mqtt_extra=f'ca_file = "{mosquitto_tls.tls.ca}"\n')
    pub = Publisher(mosquitto_tls).connect(mosquitto_tls)
    try:
        pub.status(status_doc("tls-node", 1))
        hub.wait_for(lambda: nodes(hub) == 1)
    finally:
        pub.close()


def test_mqtt_311_and_broker_restart(
    hub_factory: Callable[..., HubProc], mosquitto: Mosquitto
) -> None:
    hub = hub_factory(mqtt_extra='protocol = "3.1.1"\n')
    pub = Publisher(mosquitto).connect(mosquitto)
    pub.status(status_doc("a", 1))
    hub.wait_for(lambda: nodes(hub) == 1)
    pub.close()
    mosquitto.stop()  # persistence is off: the broker forgets the hub's session
    hub.wait_for(lambda: hub.get("/api/v1/health")["mqtt"] == "disconnected")
    mosquitto.start()
    hub.wait_for(lambda: hub.get("/api/v1/health")["mqtt"] == "connected", timeout=20)
    pub = Publisher(mosquitto).connect(mosquitto)
    try:
        pub.status(status_doc("b", 1))
        hub.wait_for(lambda: nodes(hub) == 2)
    finally:
        pub.close()
