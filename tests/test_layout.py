"""The package's shape, kept by tests: imports flow one way, in the order docs/architecture.md gives,
and no module reaches into another module's private (underscore) names."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PKG = ROOT / "storyloom"


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PKG.glob("*.py"))}


def documented_order() -> list[str]:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- import order -->\n```\n(.*?)```", doc, re.S).group(1)
    return block.split()


def storyloom_imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import a, b
                found |= {a.name for a in node.names}
    return found


def test_each_module_imports_only_modules_before_it_in_the_documented_order():
    order = documented_order()
    mods = modules()
    assert sorted(order) == sorted(mods), "docs/architecture.md's import order must list every module once"
    for name, tree in mods.items():
        later = {m for m in storyloom_imports(tree) if order.index(m) >= order.index(name)}
        assert not later, f"{name}.py imports {sorted(later)}, which come after it in docs/architecture.md"


def private_names(tree: ast.Module) -> set[str]:
    """Underscore names a module defines: functions, classes, constants, and attributes it sets on objects."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_module_uses_another_modules_private_names():
    mods = modules()
    owned = {name: private_names(tree) for name, tree in mods.items()}
    for name, tree in mods.items():
        foreign = set().union(*(v for k, v in owned.items() if k != name)) - owned[name]
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                used |= {a.name for a in node.names if a.name.startswith("_")}
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in foreign:
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    used.add(node.attr)
        assert not used, f"{name}.py uses private names of other modules: {sorted(used)}; give them a public name"


def test_the_rule_catches_a_reach_into_another_module():
    a, b = ast.parse("def _helper(): pass\nclass W:\n    def _read(self): pass"), ast.parse("def f(w): return w._read()")
    foreign = private_names(a)
    assert "_read" in foreign and any(isinstance(n, ast.Attribute) and n.attr in foreign for n in ast.walk(b))
