"""bench.compiled_tree: the module list it hands to mypyc stays compilable.

The build itself (~75 s of C compilation) is a benchmark step, not a test; what
can silently break is the list: a renamed module, or a hot module that gains a
pydantic model (mypyc cannot compile those).
"""

from __future__ import annotations

import ast

from bench.compiled_tree import HOT_MODULES, ROOT


def test_every_hot_module_exists_once() -> None:
    assert len(set(HOT_MODULES)) == len(HOT_MODULES)
    missing = [m for m in HOT_MODULES if not (ROOT / m).is_file()]
    assert missing == []


def test_no_hot_module_defines_a_pydantic_model() -> None:
    offenders = []
    for module in HOT_MODULES:
        tree = ast.parse((ROOT / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                if bases & {"BaseModel", "pydantic.BaseModel", "BaseSettings", "_Section"}:
                    offenders.append(f"{module}:{node.name}")
    assert offenders == []


def test_the_fast_lane_and_the_feature_read_are_covered() -> None:
    # The two modules the profile ranks highest: without them the A/B says nothing.
    assert "router/transport/fastlane.py" in HOT_MODULES
    assert "router/backends/feast_store.py" in HOT_MODULES
