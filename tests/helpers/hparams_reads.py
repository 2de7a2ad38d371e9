"""Which hyperparameter names the code reads, found by parsing its source (no code is run).

A read is any access to a key on an expression whose name contains ``hps`` (``hps``, ``self.hps``, ``vq_hps``):
``hps.key``, ``hps["key"]``, ``hps.get("key")``, ``getattr(hps, "key")``. When the key is computed
(``hps[name]``, ``hps.get(k)``, ``hps[f"lmix_{name}"]``), every string constant of the enclosing function, and of
the module-level tuples/lists it names, counts as read, behind the f-string's constant prefix if there is one.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path


def _holds_hps(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "hps" in name.lower()


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _key_expression(node: ast.AST) -> ast.AST | None:
    """The key of a read of hps at ``node`` (None if ``node`` is not one); attribute reads give a constant."""
    if isinstance(node, ast.Attribute) and _holds_hps(node.value):
        return ast.Constant(node.attr)
    if isinstance(node, ast.Subscript) and _holds_hps(node.value):
        return node.slice
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and _holds_hps(func.value):
            return node.args[0]
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) > 1 and _holds_hps(node.args[0]):
            return node.args[1]
    return None


class _Reads(ast.NodeVisitor):
    def __init__(self, tree: ast.Module) -> None:
        self.module_strings = {  # NAMES = ("a", "b") at module level
            target.id: _strings(stmt.value)
            for stmt in tree.body if isinstance(stmt, ast.Assign) and isinstance(stmt.value, (ast.Tuple, ast.List))
            for target in stmt.targets if isinstance(target, ast.Name)
        }
        self.scopes: list[ast.AST] = [tree]
        self.reads: set[str] = set()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scopes.append(node)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def generic_visit(self, node: ast.AST) -> None:
        key = _key_expression(node)
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            self.reads.add(key.value)
        elif key is not None:
            self.reads |= self._computed(key)
        super().generic_visit(node)

    def _computed(self, key: ast.AST) -> set[str]:
        scope = self.scopes[-1]
        candidates = _strings(scope)
        for name in {n.id for n in ast.walk(scope) if isinstance(n, ast.Name)} & self.module_strings.keys():
            candidates |= self.module_strings[name]
        prefix = ""
        if isinstance(key, ast.JoinedStr) and key.values and isinstance(key.values[0], ast.Constant):
            prefix = key.values[0].value
        return {prefix + c for c in candidates}


def hparam_reads(paths: Iterable[Path]) -> set[str]:
    """Every key read from hps in the Python files ``paths``."""
    reads: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        visitor = _Reads(tree)
        visitor.visit(tree)
        reads |= visitor.reads
    return reads
