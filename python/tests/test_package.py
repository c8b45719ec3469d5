"""The package imports and its extension matches the engine."""

import runcache


def test_extension_loads_and_reports_versions():
    assert runcache.__version__ == "0.1.0"
    assert runcache._core.KEY_FORMAT_VERSION == 1


#: The package's modules from the lowest layer to the highest. A module may import only modules
#: before it (docs/architecture.md, "Layers"); function-level imports count too.
LAYERS = [
    "_core", "_config", "_run", "_ui", "_scope", "_progress", "_entry", "_results", "_executors",
    "_slurm", "_remote", "_dask", "_ray", "_sweep", "_task", "_batch", "_memory", "_worker",
    "__main__", "__init__",
]


def _imported_modules(path):
    """The runcache modules a source file imports (top level of the package), anywhere in it."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runcache"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from runcache import _a, _b
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.split(".")[1] for a in node.names if a.name.startswith("runcache.")
            )
    return found


def test_package_modules_import_only_lower_layers():
    from pathlib import Path

    root = Path(runcache.__file__).parent
    sources = {p.stem: p for p in root.glob("*.py")}
    sources.update({p.name: p for p in root.iterdir() if (p / "__init__.py").exists()})
    assert set(sources) <= set(LAYERS), f"place new modules in LAYERS: {set(sources) - set(LAYERS)}"
    upward = []
    for name, path in sources.items():
        files = [path] if path.is_file() else sorted(path.glob("*.py"))
        for f in files:
            for dep in _imported_modules(f) - {name}:
                if dep in LAYERS and LAYERS.index(dep) > LAYERS.index(name):
                    upward.append(f"{f.relative_to(root)} imports {dep}")
    assert not upward, "a lower module imports a higher one: " + "; ".join(upward)
