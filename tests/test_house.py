"""The house's rules, read from the code: layers import only layers below them, no stage imports
another stage, no import cycle, and the drivers that run without torch import none."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cgi2real"
# Bottom to top: a module may import its own layer and those before it (README "Layout").
LAYERS = ("core", "synth", "storage", "formats", "imaging", "model", "runtime", "pipelines", "plans", "stages", "top")
# Modules a labeling driver, the review page, the renderer's job and the CLI's option checks load:
# importing them must not import torch.
TORCH_FREE = (
    "cgi2real.cli", "cgi2real.submit", "cgi2real.demo", "cgi2real.stages.label", "cgi2real.stages.review", "cgi2real.stages.synth",
    "cgi2real.pipelines.labeling", "cgi2real.runtime.cluster", "cgi2real.runtime.progress", "cgi2real.formats.package",
    "cgi2real.formats.label_table", "cgi2real.formats.class_folders", "cgi2real.storage.locations", "cgi2real.storage.listing",
    "cgi2real.storage.reads", "cgi2real.core.config", "cgi2real.core.archs", "cgi2real.core.classes", "cgi2real.core.errors",
    "cgi2real.plans.train", "cgi2real.plans.adapt", "cgi2real.plans.evaluate", "cgi2real.formats.checkpoints",
)


def module_name(path: Path) -> str:
    return ".".join(("cgi2real", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "top"


def imports_of(path: Path) -> set[str]:
    """Every cgi2real module `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cgi2real"):
            for alias in node.names:  # `from cgi2real.stages import label` imports the module cgi2real.stages.label
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE / Path(*sub.split(".")[1:])).with_suffix(".py").exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cgi2real")}
    return {m for m in found if m != "cgi2real"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_layers_import_only_layers_below_and_stages_no_other_stage():
    graph = import_graph()
    upward = [(m, i) for m, imported in graph.items() for i in imported if LAYERS.index(layer_of(i)) > LAYERS.index(layer_of(m))]
    stage_to_stage = [(m, i) for m, imported in graph.items() for i in imported if layer_of(m) == layer_of(i) == "stages" and m != i]
    print(f"modules {len(graph)}, upward imports {len(upward)}, stage-to-stage imports {len(stage_to_stage)}")
    assert not upward, upward
    assert not stage_to_stage, stage_to_stage


def test_no_import_cycle():
    graph = import_graph()
    state, cycles = {}, []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [module, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    print(f"import cycles {len(cycles)}")
    assert not cycles, cycles


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The two tests above fail on a house that breaks the rules (a copy with one bad import added)."""
    import shutil

    copy = tmp_path / "cgi2real"
    shutil.copytree(PACKAGE, copy)
    with open(copy / "formats" / "package.py", "a") as f:
        f.write("\n\ndef _upward():\n    from cgi2real.stages import label  # noqa: F401\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    with pytest.raises(AssertionError):
        test_layers_import_only_layers_below_and_stages_no_other_stage()
    with pytest.raises(AssertionError):  # stages.label -> formats.label_table -> formats.package -> stages.label
        test_no_import_cycle()


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"torch-free module imported {name}")
sys.meta_path.insert(0, Block())
for module in sys.argv[1:]:
    __import__(module)
print("ok")
"""


def test_drivers_import_no_torch():
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *TORCH_FREE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    broken = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "cgi2real.model.inputs"], capture_output=True, text=True, timeout=120)
    assert "torch-free module imported torch" in broken.stderr  # the block works: a torch module is refused
