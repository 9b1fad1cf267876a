"""The layout carries the rules: SQL only in device/records, device imports neither training nor convert,
bench/ and tests/ share helpers through testkit/ instead of importing each other, and the training and
conversion commands reach `leukoscope` through their own entry points."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from testkit import REPO

SQL = re.compile(r"\.execute(many|script)?\(|\b(SELECT|INSERT|UPDATE|DELETE FROM|CREATE TABLE|PRAGMA)\b")


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), wherever the import statement sits."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_sql_only_in_the_records_package():
    offenders = []
    for path in _sources("device"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("device/records/"):
            continue
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if SQL.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "SQL outside device/records:\n" + "\n".join(offenders)


def test_the_sql_check_finds_sql():
    # guards the test above: the pattern must catch the forms the web layer used to contain
    for line in ('row = store.connect().execute("SELECT crop_path FROM cells WHERE id = ?", (i,))',
                 'tx.execute("UPDATE users SET active = ? WHERE id = ?", (a, i))', "conn.executescript(x)"):
        assert SQL.search(line), line
    assert any(SQL.search(p.read_text("utf-8")) for p in _sources("device/records"))


def test_device_imports_neither_training_nor_convert():
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in _sources("device") for m in sorted(_imports(p))
                 if m.split(".")[0] in ("training", "convert")]
    assert not offenders, offenders
    # and no import by name at run time either (importlib.import_module("training..."))
    text = [p for p in _sources("device") if re.search(r"""import_module\(\s*["'](training|convert)""",
                                                         p.read_text("utf-8"))]
    assert not text, text


def test_bench_and_tests_share_helpers_through_testkit():
    bench_to_tests = [f"{p.relative_to(REPO)}: {m}" for p in _sources("bench") for m in _imports(p)
                      if m.split(".")[0] == "tests"]
    assert not bench_to_tests, bench_to_tests
    # tests import bench only where they test a bench itself
    allowed = {"test_faults.py",  # runs bench.powercut's kill -9 rounds at a small scale
               "test_unreadable_and_no_cell.py"}  # bench.blast_screen's denominators, on images made in the test
    tests_to_bench = [f"{p.relative_to(REPO)}: {m}" for p in _sources("tests") for m in _imports(p)
                      if m.split(".")[0] == "bench" and p.name not in allowed]
    assert not tests_to_bench, tests_to_bench
    testkit = [f"{p.relative_to(REPO)}: {m}" for p in _sources("testkit") for m in _imports(p)
               if m.split(".")[0] in ("tests", "bench")]
    assert not testkit, testkit


def test_training_and_convert_commands_are_discovered():
    from device.cli import build_parser, discover_commands

    names = dict(discover_commands())
    assert {"training", "convert"} <= set(names)
    ap = build_parser()
    args = ap.parse_args(["train", "--config", "x.toml"])
    assert args.func.__module__ == "training.cli"
    args = ap.parse_args(["convert", "run", "--variant", "float16"])
    assert args.func.__module__ == "convert.cli" and args.variant == "float16"
    args = ap.parse_args(["model", "test", "--json"])
    assert args.func.__module__ == "convert.cli" and args.json


def test_a_missing_command_package_leaves_the_device_commands_working(tmp_path):
    # the box without the training code: importing training or convert fails, `leukoscope` still works
    code = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('training', 'convert'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from device.cli import build_parser, main
ap = build_parser()
assert 'train' not in ap._subparsers._group_actions[0].choices
sys.exit(main(['config', 'defaults']))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[camera]" in out.stdout


def test_the_commands_run_through_the_console_entry():
    out = subprocess.run([sys.executable, "-m", "device.cli", "convert", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--parity-floor" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "device.cli", "train", "--config", str(REPO / "nope.toml")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "nope.toml" in out.stderr, out.stderr[-2000:]


# The data flows one way: a field from the camera, through the image work, the model, the records, to the
# box's loop and the page. A package may import those before it, never one after it (two packages importing
# each other would be one job split in two). Top-level modules are layers of their own (``schema``: the typed
# settings every layer declares its section with).
LAYERS = ("schema", "imageio", "camera", "analysis", "model", "calibration", "records", "config", "settings", "district",
          "box", "web", "serve", "cli")


def _layer(module: str) -> str | None:
    """The layer of a ``device`` module (its package or top-level module), None outside ``device``."""
    parts = module.split(".")
    if parts[0] != "device":
        return None
    return parts[1] if len(parts) > 1 else "device"


def _device_imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every ``device`` import in a file, wherever it sits (a function-local import counts
    too); ``from device import records`` is an import of ``device.records``, relative imports are resolved."""
    out = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base == "device":
                out += [(node.lineno, f"device.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, base))
    return [(n, m) for n, m in out if _layer(m) not in (None, "device")]


def _against_the_flow(root: Path) -> list[str]:
    offenders = []
    for path in sorted((root / "device").rglob("*.py")):
        rel = path.relative_to(root)
        parts = rel.with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = _layer(module)
        if here == "device":  # device/__init__.py
            continue
        if here not in LAYERS:
            offenders.append(f"{rel.as_posix()}: {here!r} is in no layer: add it to LAYERS where the data reaches it")
            continue
        for line, imported in _device_imports(path, module):
            there = _layer(imported)
            if there not in LAYERS:
                offenders.append(f"{rel.as_posix()}:{line}: imports {imported}, in no layer")
            elif LAYERS.index(there) > LAYERS.index(here):
                offenders.append(f"{rel.as_posix()}:{line}: {here} imports {imported} ({there} comes after {here})")
    return offenders


def test_device_imports_follow_the_data_flow():
    offenders = _against_the_flow(REPO)
    assert not offenders, "imports against the data flow " + " -> ".join(LAYERS) + ":\n" + "\n".join(offenders)


def test_the_flow_check_finds_a_back_import(tmp_path):
    # guards the test above: a function-local import, a `from device import x` and a relative import against the
    # order are each found, with their file and line; an import along the flow is not
    for rel, text in {"device/__init__.py": "",
                      "device/analysis/__init__.py": "",
                      "device/analysis/pipeline.py": "import numpy\nfrom device.analysis import cells\n\n"
                                                     "def f():\n    from device.model.classifier import Classifier\n",
                      "device/model/__init__.py": "",
                      "device/model/bundle.py": "from device.analysis.preprocess import Preprocessing\n"
                                                "from device import records\n",
                      "device/records/__init__.py": "from ..web import words\n",
                      "device/box/runtime.py": "from device.model import bundle\n",
                      "device/gadget.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = _against_the_flow(tmp_path)
    assert found == ["device/analysis/pipeline.py:5: analysis imports device.model.classifier (model comes after analysis)",
                     "device/gadget.py: 'gadget' is in no layer: add it to LAYERS where the data reaches it",
                     "device/model/bundle.py:2: model imports device.records (records comes after model)",
                     "device/records/__init__.py:1: records imports device.web (web comes after records)"], found


def test_one_rule_decides_whether_a_request_wants_json():
    # the pages answered JSON-or-HTML by three different tests of the request; now one helper decides for all
    readers = [f"{p.relative_to(REPO)}:{n}" for p in _sources("device/web")
               for n, line in enumerate(p.read_text("utf-8").splitlines(), 1)
               if re.search(r"accept_mimetypes|request\.is_json|startswith\(\s*[\"']/api/", line)]
    assert readers and all(r.startswith("device/web/common.py:") for r in readers), readers
