"""The box has no TensorFlow: every device module must import without it."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import device
from testkit import REPO

BLOCK_TF = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):
            raise ImportError('TensorFlow is not installed on this box')
sys.meta_path.insert(0, Block())
"""


def _device_modules():
    return sorted(m.name for m in pkgutil.walk_packages(device.__path__, "device."))


def test_every_device_module_imports_without_tensorflow():
    mods = _device_modules()
    assert "device.analysis.preprocess" in mods and "device.cli" in mods
    code = BLOCK_TF + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) + (
        "assert 'tensorflow' not in sys.modules\nprint('ok', len(sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_the_block_really_blocks():
    # guards the test above: the same prelude must make importing tensorflow fail
    out = subprocess.run([sys.executable, "-c", BLOCK_TF + "import tensorflow"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "not installed on this box" in out.stderr


def test_default_bundle_classifies_a_field_without_tensorflow():
    code = BLOCK_TF + """
from device.model.bundle import load_bundle
from device.model.classifier import Classifier
from device.imageio import read_image
from device.model.analyzer import Analyzer
b = load_bundle()
clf = Classifier(b, threads=1)
res = Analyzer(clf).analyze(read_image('device/assets/fields/BloodImage_00000.jpg'))
assert res.qc.ok and len(res.cells) >= 1, res
assert 'tensorflow' not in sys.modules
print(clf.runtime, b.name, len(res.cells))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "ai-edge-litert"
