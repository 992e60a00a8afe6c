"""Plain counter dataclasses -> Prometheus text, for components that keep `stats` as data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any


def render_counters(prefix: str, stats: Any) -> str:
    """Each int/float field becomes `{prefix}_{field}`; a dict field becomes a labelled family."""
    assert is_dataclass(stats)
    lines: list[str] = []
    for f in fields(stats):
        value = getattr(stats, f.name)
        name = f"{prefix}_{f.name}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            lines += [f"# TYPE {name} counter", f"{name} {value}"]
        elif isinstance(value, dict):
            lines.append(f"# TYPE {name} counter")
            for key, v in sorted(value.items()):
                label = str(key).replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{name}{{key="{label}"}} {v}')
    return "\n".join(lines) + "\n"


def counters_source(prefix: str, stats_of: Callable[[], Any]) -> Callable[[], str]:
    return lambda: render_counters(prefix, stats_of())
