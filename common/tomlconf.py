"""Typed, strict reads from a parsed TOML document, shared by agent.toml and fleet.toml.

Every read removes its key, so whatever is left when a table is ``done()`` is a typo and
an error: on a remote device a misspelt key must never fall back to a default. Errors
name the file, the dotted key and the problem. No I/O beyond checking named files exist;
the hub may import this module (like common.wire) without pulling in the agent.
"""

from __future__ import annotations

import difflib
import math
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import SplitResult, urlsplit

from common.durations import DAY, DurationError, parse_duration

T = TypeVar("T")
ErrorFactory = Callable[[str, str, str], Exception]
"""(file, key, problem) -> the caller's ConfigError."""
MAX_DURATION = 365 * DAY
"""Default ceiling of a duration key: longer is a slip (and overflows timers downstream)."""
MQTT_KEEPALIVE_MAX = 65535
"""The MQTT keepalive field is 16 bits."""


def load_toml(path: Path, error: ErrorFactory) -> dict[str, Any]:
    """Read and parse a TOML file; every failure is one ``error(file, key, problem)``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise error(str(path), "(file)", "does not exist") from err
    except OSError as err:
        raise error(str(path), "(file)", f"cannot be read: {err.strerror}") from err
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise error(str(path), "(file)", "is not UTF-8 text") from err
    except ValueError as err:  # TOMLDecodeError, or an integer literal of over 4300 digits
        raise error(str(path), "(syntax)", f"invalid TOML: {err}") from err
    except RecursionError as err:  # tomllib recurses per nesting level
        raise error(str(path), "(syntax)", "nested too deeply") from err


def shown(value: object) -> str:
    """repr for a message: TOML integers are unbounded, and repr refuses past 4300 digits."""
    try:
        return repr(value)
    except ValueError:
        return f"a {type(value).__name__} holding a huge integer"


def _number_text(value: float) -> str:
    try:
        return f"{value:.15g}"
    except OverflowError:
        return "an integer beyond float range"


class Section:
    def __init__(
        self,
        path: Path,
        prefix: str,
        data: Mapping[str, Any],
        error: ErrorFactory,
        relative_paths: bool = False,
    ) -> None:
        self.path = path
        self.prefix = prefix
        self.data = dict(data)
        self.error = error
        self.relative_paths = relative_paths
        """True: a relative path is taken from the config file's directory; False: refused."""

    def err(self, key: str, problem: str) -> Exception:
        if key not in self.data and problem.startswith("is required"):
            # A required key that is missing is often one that is misspelt: name it.
            near = difflib.get_close_matches(key, [str(k) for k in self.data], n=1, cutoff=0.75)
            if near:
                problem += f" (is {self.prefix + near[0]!r} a misspelling?)"
        return self.error(str(self.path), self.prefix + key, problem)

    def _child(self, prefix: str, data: Mapping[str, Any]) -> Section:
        return Section(self.path, prefix, data, self.error, self.relative_paths)

    def _take(self, key: str, kind: type[T] | tuple[type, ...], what: str) -> T | None:
        if key not in self.data:
            return None
        value = self.data.pop(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; never accept true where a number is meant.
        if isinstance(value, bool) and bool not in kinds:
            raise self.err(key, f"must be {what}, got a boolean")
        if not isinstance(value, kind):
            raise self.err(key, f"must be {what}, got {type(value).__name__} {shown(value)}")
        return cast(T, value)

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._take(key, str, "a string")
        if value is not None and not value.strip():
            raise self.err(key, "must not be empty")
        return default if value is None else value

    def flag(self, key: str, default: bool) -> bool:
        value = self._take(key, bool, "true or false")
        return default if value is None else value

    def number(
        self, key: str, default: float, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        value = self._take(key, (int, float), "a number")
        if value is None:
            return default
        # nan compares false with every bound, so it would pass a range check unseen; an
        # integer beyond float range is no finite number either.
        if abs(value) > sys.float_info.max or not math.isfinite(value):
            raise self.err(key, f"must be a finite number, got {_number_text(value)}")
        self._check_range(key, value, minimum, maximum)
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self._take(key, int, "an integer")
        if value is None:
            return default
        self._check_range(key, value, minimum, maximum)
        return value

    def duration(
        self,
        key: str,
        default: float,
        minimum: float = 0.0,
        maximum: float = MAX_DURATION,
    ) -> float:
        """Seconds, written as a number or as text such as "30s", "5m", "1h30m", "2d"."""
        if key not in self.data:
            return default
        raw = self.data.pop(key)
        try:
            seconds = parse_duration(raw)
        except DurationError as err:
            raise self.err(key, str(err)) from err
        self._check_range(key, seconds, minimum, maximum, unit=" seconds")
        return seconds

    def _check_range(
        self,
        key: str,
        value: float,
        minimum: float,
        maximum: float | None,
        unit: str = "",
    ) -> None:
        if minimum <= value and (maximum is None or value <= maximum):
            return
        bound = (
            f"between {minimum:.15g} and {maximum:.15g}{unit}"
            if maximum is not None
            else f"at least {minimum:.15g}{unit}"
        )
        raise self.err(key, f"must be {bound}, got {_number_text(value)}")

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key)
        if value is None:
            return default
        if value not in choices:
            raise self.err(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def path_value(self, key: str) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        if "\0" in value:
            raise self.err(key, "must not contain a NUL character")
        path = Path(value)
        if path.is_absolute():
            return path
        if not self.relative_paths:
            raise self.err(key, f"must be an absolute path, got {value!r}")
        return (self.path.parent / path).resolve()

    def file(self, key: str) -> Path | None:
        path = self.path_value(key)
        try:
            missing = path is not None and not path.is_file()
        except OSError as err:  # is_file() only hides "not found": too long, no permission...
            raise self.err(key, f"file {path} cannot be checked: {err.strerror}") from err
        if missing:
            raise self.err(key, f"file {path} does not exist or is not a regular file")
        return path

    def url(self, key: str, url: str) -> SplitResult:
        """``url`` (the value of ``key``) split; an unbalanced [IPv6] host is an error."""
        try:
            return urlsplit(url)
        except ValueError as err:
            raise self.err(key, f"{url!r} is not a URL: {err}") from err

    def dir(self, key: str, default: Path) -> Path:
        return self.path_value(key) or default

    def str_list(self, key: str) -> tuple[str, ...] | None:
        value = self._take(key, list, "a list of strings")
        if value is None:
            return None
        if not all(isinstance(v, str) and v for v in value):
            raise self.err(key, "must be a list of non-empty strings")
        return tuple(value)

    def table(self, key: str) -> Section:
        value = self._take(key, dict, "a table")
        return self._child(f"{self.prefix}{key}.", value or {})

    def tables(self, key: str) -> list[Section]:
        value = self._take(key, list, f"an array of tables ([[{key}]])")
        if value is None:
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.err(f"{key}[{i}]", "must be a table")
            out.append(self._child(f"{self.prefix}{key}[{i}].", item))
        return out

    def done(self) -> None:
        if self.data:
            key = sorted(self.data)[0]
            raise self.err(key, "unknown key (check the spelling; see docs/reference.md)")


# -- the [mqtt] table both files share --------------------------------------------------

MqttProtocol = Literal["auto", "5", "3.1.1"]
MQTT_SCHEMES = ("mqtt", "mqtts", "tcp", "ssl")
_TLS_SCHEMES = ("mqtts", "ssl")


class MqttEndpoint:
    """Where and how to reach the broker, derived from ``url`` and ``ca_file``; mixed into
    the agent's and the hub's frozen [mqtt] dataclasses."""

    url: str | None
    ca_file: Path | None

    @property
    def host(self) -> str:
        return urlsplit(self.url or "").hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url or "")
        return parts.port or (8883 if parts.scheme in _TLS_SCHEMES else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url or "").scheme in _TLS_SCHEMES or self.ca_file is not None


def mqtt_connection(sec: Section, default_url: str | None = None) -> dict[str, Any]:
    """The validated broker connection keys of an [mqtt] table, as constructor kwargs."""
    url = sec.text("url", default_url)
    if url is not None:
        parts = sec.url("url", url)
        if parts.scheme not in MQTT_SCHEMES or not parts.hostname:
            raise sec.err("url", f"{url!r} must look like mqtt://host:1883 or mqtts://host:8883")
        try:
            _ = parts.port
        except ValueError as err:
            raise sec.err("url", f"bad port in {url!r}") from err
    keys: dict[str, Any] = {
        "url": url,
        "username": sec.text("username"),
        "password_file": sec.file("password_file"),
        "ca_file": sec.file("ca_file"),
        "client_cert": sec.file("client_cert"),
        "client_key": sec.file("client_key"),
        "protocol": sec.choice("protocol", "auto", ("auto", "5", "3.1.1")),
        "keepalive": sec.integer("keepalive", 60, minimum=5, maximum=MQTT_KEEPALIVE_MAX),
    }
    if (keys["client_cert"] is None) != (keys["client_key"] is None):
        raise sec.err("client_key", "client_cert and client_key must be set together")
    return keys
