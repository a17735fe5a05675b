"""The domain is pure: standard library and phonenumbers only, synchronous, no clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "worker" / "domain"
MODULES = sorted(DOMAIN.glob("*.py"))
ALLOWED_THIRD_PARTY = {"phonenumbers"}
CLOCK_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # a relative import stays inside worker.domain only from its top level
            names.append(
                "worker.domain"
                if node.level == 1
                else f"<relative level {node.level}>"
                if node.level
                else node.module or ""
            )
    return names


def allowed(module: str) -> bool:
    top = module.split(".")[0]
    return (
        top in sys.stdlib_module_names
        or top in ALLOWED_THIRD_PARTY
        or module == "worker.domain"
        or module.startswith("worker.domain.")
    )


def test_domain_modules_are_found() -> None:
    assert {p.name for p in MODULES} >= {
        "account.py",
        "lots.py",
        "rating.py",
        "reminders.py",
        "expiry.py",
        "invoicing.py",
        "events.py",
        "errors.py",
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_domain_imports_only_the_standard_library_phonenumbers_and_itself(path: Path) -> None:
    foreign = [name for name in imported_modules(parse(path)) if not allowed(name)]

    assert foreign == []


@pytest.mark.parametrize(
    "module",
    [
        "asyncpg",
        "aiokafka",
        "faust",
        "pydantic",
        "schemas.usage",
        "worker.adapters",
        "worker.service.billing",
        "worker.entrypoints",
        "worker.config",
    ],
)
def test_the_purity_check_refuses_infrastructure(module: str) -> None:
    assert not allowed(module)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_domain_is_synchronous(path: Path) -> None:
    tree = parse(path)
    asynchronous = [
        f"{type(node).__name__} at line {node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith)
    ]

    assert asynchronous == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_domain_never_reads_the_clock(path: Path) -> None:
    calls = [
        f"{node.func.value.id}.{node.func.attr} at line {node.lineno}"
        for node in ast.walk(parse(path))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and (node.func.value.id, node.func.attr) in CLOCK_CALLS
    ]
    imported_clocks = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(parse(path))
        if isinstance(node, ast.ImportFrom) and node.module == "time"
        for alias in node.names
    ]

    assert calls == []
    assert imported_clocks == []


def test_every_entrypoint_module_sits_in_the_layers_contract() -> None:
    """The layers contract names entrypoint modules one by one; a new one must be listed."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    listed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    modules = {
        f"worker.entrypoints.{path.stem}"
        for path in (root / "worker" / "entrypoints").glob("*.py")
        if path.stem != "__init__"
    }
    assert modules - listed == set()
