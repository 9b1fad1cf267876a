"""Figures of the code at a git revision, to compare two revisions (issue 22's before/after):
lines, the largest modules, radon's worst complexity grades, device package pairs that import each other, and
in how many places one setting and the language list are written.

    python scripts/code_figures.py 4b413c1 HEAD
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

SOURCE = ("device", "convert", "training", "bench", "district", "scripts", "testkit")


def export(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "archive", rev], check=True, capture_output=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def lines(root: Path, folders) -> int:
    return sum(len(p.read_text().splitlines()) for f in folders for p in (root / f).rglob("*.py"))


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "device" else None


def import_pairs(root: Path) -> list[str]:
    """Pairs of device packages that import each other, counting imports inside functions too."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in (root / "device").rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        if len(rel.parts) < 3:
            continue  # a top-level module (config, cli, ...), not a package
        me = rel.parts[1]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                other = package_of(n) if n.count(".") >= 2 or n.startswith("device.") else None
                if other and other != me and (root / "device" / other).is_dir():
                    edges[me].add(other)
    return sorted({" <-> ".join(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})


def radon_worst(root: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "radon", "cc", "-s", "-n", "D", *SOURCE], cwd=root,
                         capture_output=True, text=True).stdout
    worst, current = [], ""
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line.strip()
        else:
            kind, _, name, _, grade, score = line.split()[:6]
            worst.append(f"{grade} {score} {current}:{name}")
    return sorted(worst, key=lambda s: -int(s.split()[1].strip("()")))


def count_c_or_worse(root: Path) -> int:
    out = subprocess.run([sys.executable, "-m", "radon", "cc", "-s", "-n", "C", "device"], cwd=root,
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("    "))


def places(root: Path, needle: str, skip: tuple[str, ...] = ()) -> int:
    """Lines of device code (not translations) that write ``needle`` other than reading it as an attribute."""
    n = 0
    for p in (root / "device").rglob("*.py"):
        for line in p.read_text().splitlines():
            if needle in line and not any(s in line for s in skip):
                n += 1
    return n


def figures(root: Path) -> dict:
    device = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in (root / "device").rglob("*.py")),
                    reverse=True)
    return {
        "lines: all source": lines(root, SOURCE),
        "lines: device": lines(root, ("device",)),
        "lines: tests": lines(root, ("tests",)),
        "largest device modules": [f"{n} {p}" for n, p in device[:4]],
        "radon D-F (worst first)": radon_worst(root),
        "device functions graded C or worse": count_c_or_worse(root),
        "device package pairs importing each other": import_pairs(root),
        "lines writing max_edge_um (name or label)": places(root, "max_edge_um", skip=(".max_edge_um", "``"))
        + places(root, "Focus: widest acceptable cell edge"),
        "lines writing the language list": places(root, '"fr"'),
    }


def main() -> None:
    revs = sys.argv[1:] or ["HEAD"]
    with tempfile.TemporaryDirectory() as tmp:
        for rev in revs:
            root = export(rev, Path(tmp) / rev)
            print(f"== {rev}")
            for k, v in figures(root).items():
                if isinstance(v, list):
                    print(f"{k}:")
                    for item in v:
                        print(f"    {item}")
                else:
                    print(f"{k}: {v}")


if __name__ == "__main__":
    main()
