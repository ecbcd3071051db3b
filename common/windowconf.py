"""A ``window`` (one string or a list of them) and its ``timezone``, read from a config table.

Shared by the hub's ``[[stages]]`` and the agent's ``[activation]`` so both accept the same
spellings and name the same keys in their errors; the windows themselves are
:mod:`common.windows`.
"""

from __future__ import annotations

from common.tomlconf import Section
from common.windows import WindowError, parse_window, zone


def read_window(sec: Section, default_tz: str | None) -> tuple[tuple[str, ...], str | None]:
    """Validated ``(window specs, time zone name)``; no specs means no window is set."""
    specs = (
        sec.str_list("window")
        if isinstance(sec.data.get("window"), list)
        else tuple(s for s in (sec.text("window"),) if s is not None)
    ) or ()
    tz_name = sec.text("timezone", default_tz)
    try:
        if tz_name is not None or specs:  # the host's zone is only read for a window
            zone(tz_name)
    except WindowError as err:
        raise sec.err("timezone", str(err)) from err
    try:
        for spec in specs:
            parse_window(spec)
    except WindowError as err:
        raise sec.err("window", str(err)) from err
    return specs, tz_name
