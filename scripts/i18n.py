"""Translation catalogues of the page and the PDF (Flask-Babel / gettext).

    python scripts/i18n.py update    # extract messages.pot from device/, merge it into every messages.po
    python scripts/i18n.py compile   # messages.po -> messages.mo (shipped in the package)
    python scripts/i18n.py check     # every language complete? (English and French must be)
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "device" / "web" / "translations"
POT = TRANSLATIONS / "messages.pot"
PYBABEL = [sys.executable, "-m", "babel.messages.frontend"]


def missing(lang: str) -> list[str]:
    from babel.messages.pofile import read_po

    with open(TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po", "rb") as fh:
        cat = read_po(fh)
    out = []
    for m in cat:
        if not m.id:
            continue
        strings = m.string if isinstance(m.string, (list, tuple)) else [m.string]
        if m.fuzzy or not all(strings):
            out.append(m.id if isinstance(m.id, str) else m.id[0])
    return out


def main(cmd: str) -> int:
    if cmd == "update":
        subprocess.run(PYBABEL + ["extract", "-F", str(ROOT / "babel.cfg"), "-k", "_l", "-k", "lazy_gettext",
                                  "--no-location", "--sort-output", "-o", str(POT), str(ROOT)], check=True, cwd=ROOT)
        subprocess.run(PYBABEL + ["update", "-i", str(POT), "-d", str(TRANSLATIONS), "--no-fuzzy-matching"],
                       check=True)
    elif cmd == "compile":
        subprocess.run(PYBABEL + ["compile", "-d", str(TRANSLATIONS), "--statistics"], check=True)
    elif cmd == "check":
        for lang in sorted(p.name for p in TRANSLATIONS.iterdir() if p.is_dir()):
            print(lang, f"{len(missing(lang))} untranslated")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
