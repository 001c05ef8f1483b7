"""The engine boundary (stream.engine.protocol.Engine): both engines implement every member with the protocol's
signature, and the compiled core checks the Python hooks it calls back when it is built, not mid-batch."""

from __future__ import annotations

import inspect

import pytest

from stream.engine import model
from stream.engine.native import NativePartitionEngine, native_available
from stream.engine.protocol import Engine
from stream.engine.reference import EngineHooks, PartitionEngine

KINDS = [PartitionEngine, NativePartitionEngine] if native_available() else [PartitionEngine]
HOOKS = ("decode_one", "reject", "emit_notice")


def _members() -> dict[str, object]:
    """The protocol's methods and properties (by their class attribute) and its data attributes (None)."""
    members: dict[str, object] = {k: v for k, v in vars(Engine).items() if not k.startswith("_")}
    members.update({k: None for k in Engine.__annotations__ if k not in members})
    return members


def _shape(fn) -> list[tuple[str, inspect._ParameterKind, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_each_engine_implements_the_protocol_with_its_signatures(policy, cls):
    engine = cls(policy)
    members = _members()
    assert {"process", "process_routed", "take_changelog", "take_changelog_batches", "adopt", "snapshot_body",
            "watermark", "state", "policy"} <= set(members)
    for name, declared in members.items():
        assert hasattr(engine, name), f"{cls.__name__} has no {name}"
        if isinstance(declared, property):
            assert not callable(getattr(engine, name)), f"{cls.__name__}.{name} is a method, not a value"
        elif isinstance(declared, staticmethod):
            assert isinstance(inspect.getattr_static(cls, name), staticmethod), f"{cls.__name__}.{name}"
            assert _shape(getattr(cls, name)) == _shape(declared.__func__), f"{cls.__name__}.{name}"
        elif callable(declared):
            assert _shape(getattr(cls, name)) == _shape(declared), f"{cls.__name__}.{name}"


def test_engine_hooks_has_every_callback_the_core_calls():
    for name in HOOKS:
        assert callable(getattr(EngineHooks, name))


@pytest.mark.skipif(not native_available(), reason="native engine not built")
@pytest.mark.parametrize("missing", HOOKS)
def test_the_core_refuses_hooks_without_a_callback_when_it_is_built(policy, missing):
    from stream import _native

    class Hooks:
        pass

    for name in HOOKS:
        if name != missing:
            setattr(Hooks, name, lambda self, *args: None)
    args = ([("US", 1, 0, [None])], [("1h", 3_600_000, 3_600_000)], 60_000, 0, 1, 1, 1, 1024, "v", (None, None, None))
    kwargs = {"statuses": ["standard"], "missing_status": "standard", "default_region": None, "max_json_depth": 8,
              "partition": 0, "partitions": 1, "rejects": model.EVENT_REJECTIONS}
    with pytest.raises(TypeError, match=f"`{missing}`"):
        _native.Core(*args, **kwargs, hooks=Hooks())
    setattr(Hooks, missing, "not callable")
    with pytest.raises(TypeError, match=f"`{missing}`"):
        _native.Core(*args, **kwargs, hooks=Hooks())
    setattr(Hooks, missing, lambda self, *args: None)
    _native.Core(*args, **kwargs, hooks=Hooks())
