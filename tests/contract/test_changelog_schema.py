"""The changelog schema has one home, stream.state.changelog_schema: the Python encoder is built from it, and the
compiled engine's compiled-in copy must equal it or the extension does not load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from stream.engine.native import native_available
from stream.state import changelog_schema as schema
from stream.state.tables import CreatorState, Streak, creator_fields

ROOT = Path(__file__).resolve().parents[2]


def test_the_layouts_are_the_structs():
    assert tuple(f.name for f in msgspec.structs.fields(Streak)) == schema.STREAK_FIELDS
    assert schema.STREAK_DEFAULTS == {"open": True}
    assert (*schema.CREATOR_FIELDS, "panes") == CreatorState.__struct_fields__
    c = CreatorState("US", 1, 2, 3, 4, True, 5)
    assert creator_fields(c) == tuple(getattr(c, f) for f in schema.CREATOR_FIELDS)
    # an older creator record leaves out the trailing fields that fall back on another's value
    assert schema.CREATOR_FIELDS[-len(schema.CREATOR_FALLBACKS):] == tuple(schema.CREATOR_FALLBACKS) == ("low",)
    assert set(schema.CREATOR_FALLBACKS.values()) <= set(schema.CREATOR_FIELDS)
    assert schema.SCHEMA["fallbacks"] == {"creator": {"low": "balance"}}
    s = Streak("c", "US", 1, 2, 3, 4, "e", False)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(s)) == [getattr(s, f) for f in schema.STREAK_FIELDS]


@pytest.mark.skipif(not native_available(), reason="native engine not built")
def test_the_native_schema_is_the_python_one():
    from stream import _native

    assert _native.changelog_schema() == schema.SCHEMA


@pytest.mark.skipif(not native_available(), reason="native engine not built")
def test_the_extension_does_not_load_on_another_schema():
    """Streak's fields reordered in Python only: importing stream._native names the difference."""
    code = ("from stream.state import changelog_schema as s\n"
            "s.SCHEMA['fields']['streak'] = s.STREAK_FIELDS[::-1]\n"
            "import stream._native\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "RuntimeError: stream._native was built for another changelog schema" in run.stderr
    assert "fields: native" in run.stderr
