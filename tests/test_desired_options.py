"""A path's edgefleet.toml: durations as operators write them; non-finite or huge timeouts
refuse the commit with a message naming the path and the key (never a traceback later)."""

from __future__ import annotations

import pytest

from agent.desired import parse_options
from agent.errors import SourceError


def test_durations_accept_seconds_and_unit_text() -> None:
    options = parse_options(
        "nodes/pi-01",
        b'[health]\ntimeout = "2m"\n'
        b'[[health.http]]\nurl = "http://127.0.0.1:8080/health"\ntimeout = "500ms"\n'
        b'[[health.http]]\nurl = "http://127.0.0.1:8081/health"\nstatus = 204\ntimeout = 3\n',
    )
    assert options.health_timeout == 120.0
    assert [(c.status, c.timeout) for c in options.http_checks] == [(200, 0.5), (204, 3.0)]
    assert parse_options("common", b"").health_timeout is None


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[health]\ntimeout = nan\n", "health.timeout", "finite"),
        ("[health]\ntimeout = -1\n", "health.timeout", "between 0 and 86400"),
        ("[health]\ntimeout = '1 hour'\n", "health.timeout", "is not a duration"),
        ("[health]\ntimeout = 1e12\n", "health.timeout", "between 0 and 86400"),
        ("[[health.http]]\nurl = 'http://x/'\ntimeout = inf\n", "health.http[0].timeout",
         "finite"),
        ("[[health.http]]\nurl = 'http://x/'\ntimeout = 1e10\n", "health.http[0].timeout",
         "between 0.001 and 3600"),
        ("[[health.http]]\nurl = 'http://x/'\ntimeout = 0\n", "health.http[0].timeout",
         "between 0.001"),
        ("[[health.http]]\nurl = 'http://x/'\ntimeout = true\n", "health.http[0].timeout",
         "boolean"),
        ("[[health.http]]\nurl = 'http://x/'\nstatus = 700\n", "health.http[0].status",
         "between 100 and 599"),
        ("[[health.http]]\nurl = 'ftp://x/'\n", "health.http[0].url", "http://"),
        ("[[health.http]]\nurl = 'http://x/'\ntimout = 1\n", "health.http[0].timout",
         "unknown key"),
        ("[health]\nhttp = 3\n", "health.http", "array of tables"),
        ("health = 3\n", "health", "must be a table"),
        ("[helth]\n", "helth", "unknown key"),
    ],
)  # fmt: skip
def test_bad_values_refuse_the_commit_naming_path_and_key(
    text: str, key: str, problem: str
) -> None:
    with pytest.raises(SourceError) as info:
        parse_options("sites/berlin", text.encode())
    message = str(info.value)
    assert message.startswith(f"sites/berlin/edgefleet.toml: {key}: ")
    assert problem in message
