"""stream/_native.pyi, the hand-written stub of the compiled module, against the built module: the same public
names, the same methods of each class, and the same parameters wherever PyO3 gives a text signature (it does for
every function, method and constructor it generates)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from stream.engine.native import native_available

pytestmark = pytest.mark.skipif(not native_available(), reason="native engine not built")

STUB = Path(__file__).resolve().parents[2] / "stream" / "_native.pyi"
Params = list[tuple[str, inspect._ParameterKind, object]]


def _module():
    from stream import _native

    return _native


def _stub() -> tuple[dict[str, ast.FunctionDef], dict[str, dict[str, ast.FunctionDef]]]:
    """The stub's module-level functions and its classes' methods, by name."""
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: {m.name: m for m in n.body if isinstance(m, ast.FunctionDef)}
               for n in tree.body if isinstance(n, ast.ClassDef)}
    return functions, classes


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _is_property(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)


def _stub_params(fn: ast.FunctionDef) -> Params:
    """A stub function's parameters as (name, kind, default), the first (self / cls) left out for methods."""
    a = fn.args
    empty = inspect.Parameter.empty

    def default(node: ast.expr | None) -> object:
        return empty if node is None else ast.literal_eval(node)

    positional = [(p, inspect.Parameter.POSITIONAL_ONLY) for p in a.posonlyargs]
    positional += [(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params: Params = [(p.arg, kind, default(d)) for (p, kind), d in zip(positional, defaults, strict=True)]
    if a.vararg:
        params.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, empty))
    params += [(p.arg, inspect.Parameter.KEYWORD_ONLY, default(d))
               for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg:
        params.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, empty))
    return params


def _params(sig: inspect.Signature, method: bool) -> Params:
    params = list(sig.parameters.values())[1 if method else 0:]
    return [(p.name, p.kind, p.default) for p in params]


def test_the_stub_names_what_the_module_exports():
    m = _module()
    functions, classes = _stub()
    stub_names = _public([*functions, *classes])
    assert stub_names == _public(dir(m))
    assert stub_names == set(m.__all__)
    for name in _public(functions):
        assert callable(getattr(m, name)) and not isinstance(getattr(m, name), type), name
    for name in _public(classes):
        assert isinstance(getattr(m, name), type), name


def test_each_class_has_the_stubs_methods_and_properties():
    m = _module()
    _, classes = _stub()
    for name in _public(classes):
        cls, methods = getattr(m, name), classes[name]
        members = {k: v for k, v in vars(cls).items() if not k.startswith("__")}
        declared = {k for k in methods if not k.startswith("__")}
        assert _public(declared) == _public(members), name
        assert declared <= set(members), f"{name}: the stub declares {sorted(declared - set(members))}"
        for attr in declared:
            is_getter = inspect.isgetsetdescriptor(members[attr]) or isinstance(members[attr], property)
            assert _is_property(methods[attr]) == is_getter, f"{name}.{attr}: property in one, method in the other"


def test_the_stubs_parameters_are_the_modules():
    m = _module()
    functions, classes = _stub()
    checked = 0
    for name in _public(functions):
        fn = getattr(m, name)
        assert fn.__text_signature__, name
        assert _params(inspect.signature(fn), method=False) == _stub_params(functions[name]), name
        checked += 1
    for name in _public(classes):
        cls, methods = getattr(m, name), classes[name]
        assert "__new__" in methods, f"{name}: the stub declares no constructor"
        assert _params(inspect.signature(cls), method=False) == _stub_params(methods["__new__"])[1:], name
        checked += 1
        for attr, fn in methods.items():
            obj = vars(cls).get(attr)
            if attr.startswith("__") or _is_property(fn) or getattr(obj, "__text_signature__", None) is None:
                continue
            assert _params(inspect.signature(obj), method=True) == _stub_params(fn)[1:], f"{name}.{attr}"
            checked += 1
    assert checked >= 30  # every function, constructor and method: a signature PyO3 stopped giving shows here


def test_the_stub_is_shipped_with_the_package():
    import tomllib

    pyproject = tomllib.loads((STUB.parents[1] / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["stream"]
    assert "_native.pyi" in shipped and "py.typed" in shipped
    assert (STUB.parent / "py.typed").exists()
