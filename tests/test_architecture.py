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
