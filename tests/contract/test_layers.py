"""The lines between stream/'s layers: engine and state are pure (no Kafka client, no runtime), kafka/ knows
Kafka but not the runtime that drives it, runtime/ does not know the process around it (service/http.py;
it reports through service/metrics.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STREAM = Path(__file__).resolve().parents[2] / "stream"

# layer -> what its modules must not import
FORBIDDEN = {
    "engine": ("stream.kafka", "stream.runtime", "stream.service", "aiokafka", "faust", "aiohttp"),
    "state": ("stream.kafka", "stream.runtime", "stream.service", "aiokafka", "faust", "aiohttp"),
    "kafka": ("stream.runtime", "stream.service"),
    "runtime": ("stream.service.http",),
    "live_clients": ("stream.runtime", "stream.service"),  # a client's gifts become records; it runs no engine
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_below_it(layer):
    crossings = [f"{path.relative_to(STREAM.parent)} imports {name}"
                 for path in sorted((STREAM / layer).glob("*.py")) for name in sorted(imports(path))
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])]
    assert not crossings, crossings


def test_every_module_is_in_a_layer():
    loose = sorted(p.name for p in STREAM.glob("*.py"))
    assert loose == ["__init__.py", "cli.py", "config.py"], loose
