"""The scoring, results, visual and exaggeration side imports and runs without torch."""

import subprocess
import sys

import pytest

TORCH_FREE = ["gradcamo.scorer", "gradcamo.results", "gradcamo.visual", "gradcamo.exaggerate"]

_IMPORT_ALL = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(len(names), sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


@pytest.mark.parametrize("package", TORCH_FREE)
def test_every_module_of_the_package_imports_without_torch(package):
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(package=package)],
                            capture_output=True, text=True, check=True)
    modules, torch_modules = result.stdout.split(" ", 1)
    assert int(modules) > 1
    assert torch_modules.strip() == "[]", f"importing {package} imports torch: {torch_modules.strip()[:200]}"


def test_the_command_line_imports_without_torch():
    code = "import sys, gradcamo.cli; print([m for m in sys.modules if m == 'torch'])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
