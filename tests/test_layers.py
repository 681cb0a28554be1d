"""The package's layers run one way: the command root (cli.app) -> server -> cli -> (train, export, synthetic) -> runtime
-> (errors, images, json_text, limits, paths, presets). The server drives the CLI's session; the root registers every command, `serve`
included.

Every module under `internvlu/` is read with `ast` (no import runs), and each `internvlu.*` module it names in
any import form, at any depth (function-level imports included), must sit in its own layer or a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "internvlu"

# Module or package -> layer. A module may import from its own layer and the layers below, never above.
# The package root (`internvlu/__init__.py`) is the runtime's public face: `from internvlu import InternVLUPipeline`.
LAYER_OF = {
    "internvlu.errors": 0, "internvlu.images": 0, "internvlu.json_text": 0, "internvlu.limits": 0, "internvlu.paths": 0,
    "internvlu.presets": 0,
    "internvlu": 1, "internvlu.runtime": 1,
    "internvlu.export": 2, "internvlu.train": 2, "internvlu.synthetic": 2,
    "internvlu.cli": 3,
    "internvlu.server": 4,
    "internvlu.cli.app": 5, "internvlu.__main__": 5,
}
LAYER_NAMES = ("base (errors, images, json_text, limits, paths, presets)", "runtime", "export/train/synthetic", "cli", "server",
               "command root (cli.app)")


def layer(module: str) -> int | None:
    """The layer of the longest entry of `LAYER_OF` that is `module` or a package above it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYER_OF:
            return LAYER_OF[prefix]
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, name) for every name that `source` imports: `import a.b` gives a.b, `from a import b` a.b (a module
    or a name inside a: either lies in a's layer), relative imports resolved, and `importlib.import_module("a.b")`
    with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, base if alias.name == "*" else f"{base}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return sorted((line, name) for line, name in found if name == "internvlu" or name.startswith("internvlu."))


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_import_reader_sees_every_import_form():
    source = (
        "import internvlu.cli.app\n"
        "from internvlu.export import manifest\n"
        "from . import quantize\n"
        "from ..train.losses import target_pixels\n"
        "def late():\n"
        "    from internvlu import synthetic\n"
        "    import importlib\n"
        "    return importlib.import_module('internvlu.export.exporter')\n"
    )
    names = {name for _, name in imported_modules(source, "internvlu.runtime.pipeline", is_package=False)}
    assert names == {"internvlu.cli.app", "internvlu.export.manifest", "internvlu.runtime.quantize",
                     "internvlu.train.losses.target_pixels", "internvlu.synthetic", "internvlu.export.exporter"}


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in _modules() if layer(module_name(p)) is None]
    assert not unplaced, f"add these modules to LAYER_OF: {unplaced}"


def test_no_module_imports_a_layer_above_its_own():
    violations = []
    for path in _modules():
        module = module_name(path)
        own = layer(module)
        for line, name in imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            target = layer(name)
            if target is None:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}, which has no layer")
            elif own is not None and target > own:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYER_NAMES[own]}) imports {name} "
                                  f"({LAYER_NAMES[target]})")
    assert not violations, "imports against the layers:\n" + "\n".join(violations)
