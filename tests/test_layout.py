"""rkd's import graph points one way: errors/defaults/config <- models, measure <- train <- kd <- study <- commands <- cli."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rkd"
LAYER = {"__init__": 0, "errors": 0, "defaults": 0, "config": 0, "models": 1, "measure": 1, "train": 2, "kd": 3,
         "study": 4, "commands": 5, "cli": 6, "__main__": 7}


def rkd_imports():
    """(importing file, its top-level part, the imported rkd module's top-level part) for every rkd import."""
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        package = list(parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                module = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "rkd":
                module = node.module.split(".")
            else:
                continue
            if len(module) > 1:
                yield path.relative_to(ROOT.parent), parts[1], module[1]


def test_every_part_of_rkd_has_a_layer():
    assert {path.stem for path in ROOT.glob("*") if path.suffix == ".py" or
            (path.is_dir() and (path / "__init__.py").exists())} == set(LAYER)


def test_no_import_points_back_up():
    upward = [(str(path), f"{part} -> {other}") for path, part, other in rkd_imports()
              if other != part and LAYER[other] > LAYER[part]]
    assert upward == []
