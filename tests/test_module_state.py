"""Nothing module-level outlives its owner: no module of gradcamo keeps a cache or an accumulating
container at module level (sessions belong to the worker plugin or the command, notes of chunks read
as zeros to the opened image, warnings to the command), except facts about the process listed here."""

import ast
import pathlib

import gradcamo

SOURCE = pathlib.Path(gradcamo.__file__).parent
PROCESS_FACTS = {
    "gradcamo.scorer.resources.process_cpus": "the CPUs this process may use (asked for by every unit)",
    "gradcamo.data.remote._transient_errors": "exception types of the installed HTTP client",
    "gradcamo.data.remote.read_errors": "exception types of the installed HTTP client",
}
"""Module-level caches allowed, with why: each holds a fact about the process, never a session or data."""
CACHES = {"cache", "lru_cache", "cached_property"}
CONTAINERS = {"set", "dict", "list", "defaultdict", "OrderedDict", "Counter", "deque", "WeakValueDictionary",
              "WeakKeyDictionary", "WeakSet", "Lock", "RLock"}


def _name(node):
    """``lru_cache`` of ``functools.lru_cache(maxsize=1)``, ``set`` of ``set()``; None otherwise."""
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None


def _module_state():
    for path in sorted(SOURCE.rglob("*.py")):
        module = ".".join(("gradcamo", *path.relative_to(SOURCE).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(_name(d) in CACHES for d in node.decorator_list):
                    yield f"{module}.{node.name}"
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                empty = isinstance(node.value, (ast.Set, ast.Dict, ast.List)) and not (
                    getattr(node.value, "elts", None) or getattr(node.value, "keys", None))
                built = isinstance(node.value, ast.Call) and not node.value.args and _name(node.value) in CONTAINERS
                if empty or built:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    yield from (f"{module}.{ast.unparse(t)}" for t in targets)


def test_no_module_level_cache_or_accumulating_container_but_facts_about_the_process():
    assert SOURCE.joinpath("scorer", "worker.py").is_file()  # the scan reads the sources under test
    assert sorted(_module_state()) == sorted(PROCESS_FACTS)


def test_the_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    """Each kind of module-level state the scan refuses, in a module of its own."""
    (tmp_path / "kinds.py").write_text(
        "import functools, threading\n_SEEN = set()\nKEPT: dict = {}\nLOCK = threading.Lock()\n"
        "CONSTANT = {'a': 1}\n@functools.lru_cache(maxsize=4)\ndef session(path):\n    return path\n")
    monkeypatch.setattr(f"{__name__}.SOURCE", tmp_path)
    assert sorted(_module_state()) == ["gradcamo.kinds.KEPT", "gradcamo.kinds.LOCK", "gradcamo.kinds._SEEN",
                                       "gradcamo.kinds.session"]
