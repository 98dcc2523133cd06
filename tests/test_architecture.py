"""Layering that code review found holding, kept so: app/ml is plain numerics and torch.

The model code must run where there is no web framework and no database (a training box,
a notebook, a torchrun worker); anything under app/ml that reaches for FastAPI, SQL or
the service layer would tie it to the server. Imports are read from the AST, so a lazy
import inside a function is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ML = Path(__file__).resolve().parents[1] / "app" / "ml"
FORBIDDEN = ("fastapi", "starlette", "sqlalchemy", "app.db", "app.services")


def imported_modules(source: str) -> list[str]:
    """Every module an `import` or `from ... import` names, at any depth."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def forbidden_in(source: str) -> list[str]:
    """The forbidden packages the source imports (or imports something from)."""
    return sorted(
        {
            banned
            for module in imported_modules(source)
            for banned in FORBIDDEN
            if module == banned or module.startswith(banned + ".")
        }
    )


def test_the_check_sees_every_kind_of_import() -> None:
    source = (
        "import fastapi\n"
        "def f():\n"
        "    from sqlalchemy.orm import Session\n"
        "from app import services\n"
        "import app.db as db\n"
        "from app.ml import model\n"
    )
    assert forbidden_in(source) == ["app.db", "app.services", "fastapi", "sqlalchemy"]


@pytest.mark.parametrize("path", sorted(ML.glob("*.py")), ids=lambda p: p.name)
def test_ml_imports_no_web_framework_sql_or_services(path: Path) -> None:
    assert forbidden_in(path.read_text()) == [], f"{path.name} must stay free of them"


APP = ML.parent


def module_graph() -> dict[str, set[str]]:
    """app module -> the app modules it imports, at any depth (lazy and TYPE_CHECKING
    imports included: a cycle hidden behind them is still a cycle of the design)."""
    names = {
        ".".join(path.relative_to(APP.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in APP.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for path in APP.rglob("*.py"):
        name = ".".join(path.relative_to(APP.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        targets = set()
        for module in imported_modules(path.read_text()):
            while module and module not in names:
                module = module.rpartition(".")[0]
            if module and module != name and module != "app":
                targets.add(module)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_app_has_no_import_cycle() -> None:
    graph = module_graph()
    assert "app.ml.model" in graph and "app.main" in graph
    assert cycles(graph) == []


def test_the_model_config_is_importable_without_torch() -> None:
    """The API validates retrain settings and the job queue stores them without torch."""
    import subprocess
    import sys

    code = "import sys, app.ml.config, app.schemas; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
