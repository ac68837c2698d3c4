"""Every shipped device profile and every example recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.recipe.config import load_recipe
from targets.profiles import list_profiles, load_profile

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(list_profiles()))
def test_every_device_profile_loads(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.backends


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*/recipe*.yaml")), ids=lambda p: p.parent.name)
def test_every_example_recipe_loads(path):
    assert load_recipe(path).name


def test_quick_teacher_exists_in_exactly_the_examples_the_docs_name():
    """docs/recipe.md names the examples that have ``models:quick_teacher``: exactly multihead and tokens."""
    import ast

    have = [p.parent.name for p in sorted((ROOT / "examples").glob("*/models.py"))
            if any(isinstance(n, ast.FunctionDef) and n.name == "quick_teacher" for n in ast.parse(p.read_text()).body)]
    assert have == ["multihead", "tokens"]
    assert "`examples/multihead` and `examples/tokens` (only those two) also have\n`models:quick_teacher`" \
        in (ROOT / "docs" / "recipe.md").read_text()
