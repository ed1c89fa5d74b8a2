"""The layering of docs/architecture.md#the-layering-rule, as a test: stages import only earlier stages (or their own),
in pipeline order config < models, shard < data < recipe < export < eval < train < bench < cli, and no two modules
import each other. Every import counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "avmae"
# Rank of each stage: a module may import modules of a lower or equal rank only. models and shard are independent
# of each other (same rank, neither imports the other: checked below).
RANKS = {"__init__": 0, "config": 0, "distributed": 0, "collectives": 0, "testing_backend": 0, "files": 0, "crc": 0,
         "storage": 0, "forward_reader": 0, "shard_files": 0, "models": 1, "shard": 1, "data": 2, "recipe": 3,
         "config_reference": 3,
         "export": 4, "eval": 5, "train": 6, "bench": 7, "cli": 8}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def avmae_imports(path: Path) -> set[str]:
    """The avmae modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "avmae":  # "from avmae import x": x is a module or a name of avmae/__init__
                found.update(f"avmae.{alias.name}" for alias in node.names)
            elif node.module.startswith("avmae."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("avmae."))
    return found


def import_graph() -> dict[str, set[str]]:
    return {_module_name(path): avmae_imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imports in graph.items():
        for target in imports:
            source_stage, target_stage = _stage(module), _stage(target)
            if source_stage not in RANKS or target_stage not in RANKS:
                found.append(f"{module} -> {target}: stage not in the layering "
                             "(add it to RANKS and docs/architecture.md)")
            elif RANKS[target_stage] > RANKS[source_stage]:
                found.append(f"{module} ({source_stage}) imports {target} ({target_stage}), a later stage")
            elif {source_stage, target_stage} == {"models", "shard"}:
                found.append(f"{module} imports {target}: models and shard stand apart")
    return found


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Pairs of modules that import each other, directly or through others (strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(" <-> ".join(sorted(component)))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_stage_imports_a_later_one():
    assert violations(import_graph()) == []


def test_no_two_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_look_for():
    """The checks themselves: an upward import and a cycle, made up, are both reported."""
    graph = {"avmae.train.trainer": {"avmae.eval.runner"}, "avmae.eval.runner": {"avmae.train.trainer"},
             "avmae.shard.writing.writer": {"avmae.models.vit"}}
    assert violations(graph) == [
        "avmae.eval.runner (eval) imports avmae.train.trainer (train), a later stage",
        "avmae.shard.writing.writer imports avmae.models.vit: models and shard stand apart"]
    assert cycles(graph) == ["avmae.eval.runner <-> avmae.train.trainer"]


@pytest.mark.parametrize("stage", sorted(set(RANKS) - {"__init__"}))
def test_every_stage_of_the_layering_exists(stage):
    assert (PACKAGE / stage).is_dir() or (PACKAGE / f"{stage}.py").is_file()
