"""The layers hold: every import in trainenv/ and agents/ read with ``ast`` (inside functions
too), checked against core < trainers < env < (audit, multiagent, calibration, docs) < warning
< (findings, monitor) < cli, that trainenv never imports agents, and agents/ against the
``__all__`` of the trainenv packages it uses."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {  # module prefix -> floor; the longest matching prefix wins
    "trainenv.core": 0,
    "trainenv.trainers": 1,
    "trainenv": 2,  # the package itself (registration only), env.py, envs.py, registration.py
    "trainenv.audit": 3,
    "trainenv.multiagent": 3,
    "trainenv.calibration": 3,
    "trainenv.docs": 3,
    "trainenv.warning": 4,  # uses the audit's task runner, store and bootstrap
    "trainenv.findings": 5,
    "trainenv.monitor": 5,  # users' own training loops: above warning, below cli
    "trainenv.cli": 6,
}
PUBLIC = ("trainenv", "trainenv.trainers", "trainenv.audit", "trainenv.warning",
          "trainenv.findings", "trainenv.monitor")  # fmt: skip


def floor(module: str) -> int:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    return FLOORS[max(prefixes, key=len)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, package: list[str]) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, name)`` per imported name in ``source`` (``name`` None for ``import
    module``), anywhere in the tree, with relative imports resolved against ``package``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
            for alias in node.names:
                yield node.lineno, base, alias.name


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def upward(source: str, here: str, is_package: bool = False) -> list[str]:
    """The imports in ``source`` (module ``here``) of a floor above ``here``'s."""
    package = here.split(".") if is_package else here.split(".")[:-1]
    return [
        f"line {line}: {module}" + (f".{name}" if name else "")
        for line, module, name in imports(source, package)
        if module.split(".")[0] == "trainenv"
        # ``from trainenv.x import y`` may name a submodule ``y``: judge the deepest module
        and floor(_target(module, name)) > floor(here)
    ]


def _target(module: str, name: str | None) -> str:
    if name is not None:
        try:
            if importlib.util.find_spec(f"{module}.{name}") is not None:
                return f"{module}.{name}"
        except (ImportError, ValueError):
            pass
    return module


def test_the_check_finds_imports_inside_functions_and_relative_ones() -> None:
    source = (
        "from trainenv.core import band\n"
        "def f():\n    from trainenv.cli import main\n"
        "def g():\n    from ..audit import runner\n"
    )
    assert upward(source, "trainenv.trainers.base") == [
        "line 3: trainenv.cli.main",
        "line 5: trainenv.audit.runner",
    ]
    assert upward(source, "trainenv.cli") == []


@pytest.mark.parametrize("path", modules("trainenv"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_lower_layer_imports_a_higher_one(path: Path) -> None:
    here = module_name(path)
    wrong = upward(path.read_text(), here, is_package=path.name == "__init__.py")
    assert not wrong, f"{here} (floor {floor(here)}) imports a higher floor: {wrong}"


@pytest.mark.parametrize("path", modules("trainenv"), ids=lambda p: str(p.relative_to(ROOT)))
def test_trainenv_never_imports_agents(path: Path) -> None:
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    wrong = [f"line {line}: {module}" for line, module, _ in imports(path.read_text(), package)
             if module.split(".")[0] == "agents"]  # fmt: skip
    assert not wrong, f"{path.name} imports agents (policies are passed in by users): {wrong}"


@pytest.mark.parametrize("path", modules("agents"), ids=lambda p: str(p.relative_to(ROOT)))
def test_agents_import_only_exported_names(path: Path) -> None:
    wrong = []
    for line, module, name in imports(path.read_text(), ["agents"]):
        if module.split(".")[0] != "trainenv":
            continue
        if module not in PUBLIC or name is None:
            wrong.append(f"line {line}: {module}" + (f" ({name})" if name else ""))
        elif name not in importlib.import_module(module).__all__:
            wrong.append(f"line {line}: {module}.{name} is not in its __all__")
    assert not wrong, f"{path.name} imports trainenv internals: {wrong}"


def test_every_exported_name_resolves() -> None:
    for package in PUBLIC:
        try:
            module = importlib.import_module(package)
        except ImportError:  # trainenv.monitor may not exist yet
            continue
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
