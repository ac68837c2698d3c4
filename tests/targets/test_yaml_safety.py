"""Recipes and profiles are untrusted YAML: an alias bomb is refused fast and no error echoes a huge value
(issue 15, items 6 and 15)."""

from __future__ import annotations

import time

import pytest

from pipeline.recipe.config import load_recipe
from targets.errors import ConfigError
from targets.profiles import load_profile

BOMB = """name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
backends: *g
"""


@pytest.mark.parametrize("loader", [load_recipe, load_profile])
def test_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path, loader):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="alias") as info:
        loader(str(path))
    assert time.perf_counter() - start < 2
    assert len(str(info.value)) < 500


def test_a_long_wrong_value_is_not_echoed_in_full(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: {factory: 'm:f', input_shape: [1, 2]}\ndata: {factory: 'd:s'}\n"
                    f"backends: {'x' * 100000}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert len(str(info.value)) < 2000


def test_bad_yaml_in_set_is_a_one_line_config_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: {factory: 'm:f', input_shape: [1, 2]}\ndata: {factory: 'd:s'}\n")
    with pytest.raises(ConfigError, match="--set backends=.*not valid YAML"):
        load_recipe(path, ["backends=[unclosed"])
