"""No module of gradcamo imports another module's private names (``_name``): what a room shares is public."""

import ast
import pathlib

import gradcamo

SOURCE = pathlib.Path(gradcamo.__file__).parent


def _private_imports():
    for path in sorted(SOURCE.rglob("*.py")):
        module = ".".join(("gradcamo", *path.relative_to(SOURCE).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradcamo") and node.module != module:
                yield from (f"{module}: from {node.module} import {alias.name}" for alias in node.names
                            if alias.name.startswith("_") and not alias.name.startswith("__"))


def test_no_module_imports_private_names_of_another():
    assert SOURCE.joinpath("scorer", "pipeline.py").is_file()  # the scan reads the sources under test
    assert list(_private_imports()) == []
