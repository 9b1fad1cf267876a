"""The training recipe: one TOML file, read into dataclasses with working defaults."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from device.model import vocabulary
from device.schema import ConfigError
from device.analysis.preprocess import Preprocessing

# The side of every cell crop, in micrometres: a large blast or monocyte (up to ~20 um)
# with a margin; PBC's images, cut at 70 % as the first bundles were, show about 28 um.
DEFAULT_CROP_UM = 28.0

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Source:
    kind: str
    path: str
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    sources: list[Source] = field(default_factory=list)
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    # Cap per class after the split (0 = all); for quick runs and tests.
    max_per_class: int = 0
    # Reinhard stain normalisation of every crop to the training split's mean colour
    # statistics (measured at training time, stored in the bundle): against colour
    # differences between labs, stains and cameras.
    stain_normalize: bool = False


@dataclass
class NetworkConfig:
    """The network trained (the recipe's [model] section); not the device's ``device.config.ModelConfig`` (which bundle
    the box runs)."""
    name: str = "leukonet"
    width: float = 1.0  # channel multiplier (leukonet) or alpha (mobilenetv2)
    dropout: float = 0.3
    weights: str | None = None  # local weights file for mobilenetv2; never downloaded
    bn_momentum: float = 0.9
    freeze_bn: bool = False  # batch norm in inference mode throughout (pretrained mobilenetv2)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    warmup_epochs: int = 2
    class_weights: bool = True
    # Stop early when validation balanced accuracy has not improved for this many epochs (0 = never).
    patience: int = 0
    threads: int = 0  # 0 = all cores
    time_limit_minutes: float = 0.0  # 0 = none; training stops after the epoch that crosses it
    # Epochs with the pretrained backbone frozen (only the new head learns) before the whole network does.
    head_epochs: int = 0
    # How examples are weighted: "class" (each class counts alike) or "source" (each class alike, and
    # within a class each source alike: blasts come from one lab only, so the lab must not predict them).
    balance: str = "class"
    # Extra weight on a class's examples (a mistake on them costs more), e.g. {lymphocyte = 2.0}.
    cost: dict[str, float] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    flip: bool = True
    rot90: bool = True
    shear: float = 0.1  # radians
    zoom: float = 0.1  # +/- fraction
    shift: float = 0.05  # +/- fraction of the side
    brightness: float = 0.1
    contrast: float = 0.1
    stain: float = 0.05  # HED channel jitter (scale and shift)
    blur: float = 0.0  # maximum Gaussian blur sigma in pixels: softer optics than the training scanner
    # Colour style of other labs: hue shift (fraction of the hue circle), saturation (+/- fraction), and
    # the probability of showing a crop in grey levels only (morphology without colour).
    hue: float = 0.0
    saturation: float = 0.0
    grey: float = 0.0
    # Stain looks of other labs made before the device's normalisation (training/stain.py): this many
    # restained copies of every training cell, each passed through the device's own pre-processing.
    stain_variants: int = 0
    stain_strength: float = 1.0  # 1 = the Romanowsky gamut of training/stain.py


@dataclass
class EvalConfig:
    target_sensitivity: float = 0.95  # malignant operating point chosen on validation
    # Cells whose top probability is below the threshold are left "uncertain" for review;
    # the threshold is the lowest one at which validation accuracy on kept cells reaches this.
    review_accuracy: float = 0.99
    # Blast probability from which a cell below the operating point still goes to review: the
    # validation threshold for this (higher) sensitivity.
    review_sensitivity: float = 0.995
    # 0: one point, chosen for target_sensitivity. Above 0: a cell is called blast only from the threshold at
    # which this share of validation normal cells stays below it; cells from the target_sensitivity point up
    # to it go to review as possible blasts (screening sensitivity counts both).
    blast_specificity: float = 0.0


@dataclass
class Recipe:
    task: str
    seed: int = 1234
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    # Cells are framed as the device frames them: a square of DEFAULT_CROP_UM micrometres.
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing(crop_um=DEFAULT_CROP_UM))
    model: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d


def build_section(cls, raw: dict, where: str):
    """A dataclass from a TOML table, types checked loosely (the appliance's own settings go through
    device/config.py's schema, ``check_section``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"[{where}]: unknown setting(s) {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name) if not dataclasses.is_dataclass(known[name].type) else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{where}] {name}: expected true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"[{where}] {name}: expected a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"[{where}] {name}: expected text, got {value!r}")
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def resolve_data_path(path: str, base: Path | None = None) -> Path:
    """Absolute as given; relative to the working directory, else to the config file, else to the repo root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for root in (Path.cwd(), base, REPO_ROOT):
        if root is not None and (root / p).exists():
            return (root / p).resolve()
    return (Path.cwd() / p).resolve()


def _model_section(raw: dict, base: Path | None) -> NetworkConfig:
    model = build_section(NetworkConfig, raw, "model")
    if model.weights:  # a local file, found as data paths are
        model.weights = str(resolve_data_path(model.weights, base))
    return model


def recipe_from_dict(raw: dict, base: Path | None = None) -> Recipe:
    raw = dict(raw)
    if "task" not in raw:
        raise ValueError("the recipe must name a task")
    vocabulary.task_labels(raw["task"])
    data_raw = dict(raw.pop("data", {}))
    sources = []
    for s in data_raw.pop("sources", []):
        s = dict(s)
        kind, path = s.pop("kind"), s.pop("path")
        sources.append(Source(kind, str(resolve_data_path(path, base)), s.pop("options", s)))
    data = build_section(DataConfig, data_raw, "data")
    data.sources = sources
    recipe = Recipe(
        task=raw.pop("task"),
        seed=int(raw.pop("seed", 1234)),
        name=raw.pop("name", ""),
        data=data,
        preprocessing=Preprocessing.from_dict({"crop_um": DEFAULT_CROP_UM, **raw.pop("preprocessing", {})}),
        model=_model_section(raw.pop("model", {}), base),
        train=build_section(TrainConfig, raw.pop("train", {}), "train"),
        augment=build_section(AugmentConfig, raw.pop("augment", {}), "augment"),
        evaluate=build_section(EvalConfig, raw.pop("evaluate", {}), "evaluate"),
    )
    if raw:
        raise ValueError(f"unknown recipe sections: {sorted(raw)}")
    if not recipe.data.sources:
        raise ValueError("the recipe names no data: add [[data.sources]] with kind and path")
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    return recipe_from_dict(raw, base=path.resolve().parent)
