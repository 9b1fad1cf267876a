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
