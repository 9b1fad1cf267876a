"""The ``leukoscope`` command. Sub-commands import their parts lazily, so the
device commands never pull in TensorFlow. The training and conversion commands (train, evaluate, convert,
model test) are registered by the ``training`` and ``convert`` packages through the ``leukoscope.commands``
entry points (see ``discover_commands``): ``device`` imports neither."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tomllib
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path

COMMAND_GROUP = "leukoscope.commands"
SYSTEM_CONFIG = Path("/etc/leukoscope/config.toml")  # where install.sh writes it and systemd's serve reads it
log = logging.getLogger("leukoscope.cli")


def config_path(given: str | None) -> str | Path | None:
    """The config file every command reads: the one ``--config`` names, else the appliance's own
    (``SYSTEM_CONFIG``, as the installed ``serve`` reads it) when it exists, else none (the built-in defaults)."""
    if given:
        return given
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def add_bundle_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that works on a model: by default the bundle the device uses."""
    p.add_argument("--bundle", help="this bundle file instead of the model the device uses")
    p.add_argument("--config", help=f"config TOML (default: {SYSTEM_CONFIG} if it exists, else built-in defaults)")
    p.add_argument("--data-dir", help="the data folder whose installed model to use")


def active_bundle(args, threads: int | None = None, cfg=None):
    """(bundle, classifier) a command works on: the file ``--bundle`` names (it must pass every check), else
    the model the device uses, by the rule ``serve`` follows (``installed.load_active``): the configured bundle,
    then the data folder's installed model, then the shipped default, the first that passes every check."""
    from device.model.installed import load_active, load_validated

    cfg = cfg or _load_config(getattr(args, "config", None), getattr(args, "data_dir", None))
    threads = threads or cfg.model.threads
    if getattr(args, "bundle", None):
        return load_validated(Path(args.bundle), threads=threads)
    bundle, clf, _ = load_active(cfg.model.bundle, cfg.data_dir, threads)
    return bundle, clf


def _model_info(args) -> int:
    """The metadata of the bundle the device uses, or of the file ``--bundle`` names: that file's metadata is shown
    even when its trial classification fails, and then the refusal, naming the file (exit status 2)."""
    from device.model.bundle import BundleError, load_bundle, summary
    from device.model.installed import validated

    if not getattr(args, "bundle", None):
        return _print_info(summary(active_bundle(args)[0]), args.json)
    cfg = _load_config(args.config, args.data_dir)
    bundle = load_bundle(Path(args.bundle))  # a refusal here names the file already
    try:
        validated(bundle, threads=cfg.model.threads)
        problem = None
    except (BundleError, ValueError) as exc:
        problem = str(exc)
    _print_info(summary(bundle), args.json)
    if problem:
        print(f"leukoscope model: {Path(args.bundle).name}: refused by the trial classification: {problem}",
              file=sys.stderr)
        return 2
    return 0


def _dataset_line(d: dict) -> str:
    """A part the bundle does not record is left unsaid, never printed as "None"."""
    return (f"data:     {d['name']}" + (f" ({d['licence']})" if d.get("licence") else "")
            + (f", split by {d['split_unit']}" if d.get("split_unit") else ""))


def _figure(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "not recorded"


def _print_info(info: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"bundle:   {info['path']}")
    print(f"model:    {info['name']} {info['version']} ({info['task']}, {info['quantization']}, "
          f"{info['model_bytes']:,} bytes, created {info['created_at']})")
    print(f"sha256:   {info['sha256']['model.tflite']}")
    print(f"input:    {info['input']['size']}x{info['input']['size']} {info['input']['color_order']}, "
          f"{info['input']['dtype']}")
    print("labels:   " + ", ".join(f"{l['name']} ({l['category']})" for l in info["labels"]))
    print("thresholds: " + ", ".join(f"{k} {v:.4g}" for k, v in (info["thresholds"] or {}).items()))
    for d in info["datasets"] or []:
        print(_dataset_line(d))
    for name, m in (info["metrics"] or {}).items():
        print(f"test {name}: balanced accuracy {_figure(m.get('balanced_accuracy'))}, "
              f"macro F1 {_figure(m.get('macro_f1'))} (n={m.get('n')})")
    if info["parity"]:
        print(f"parity:   top-1 agreement {info['parity']['top1_agreement']:.4f}")
    for note in info.get("notes", []):
        print(f"note:     {note}")
    print("A screening aid, not a diagnosis.")
    return 0


def _device_analyzer(args):
    """The device's own path: the bundle the device uses (or the one given), the config's finder and scale
    settings."""
    from device.model.analyzer import Analyzer

    cfg = _load_config(args.config, args.data_dir)
    bundle, clf = active_bundle(args, getattr(args, "threads", None), cfg)
    return bundle, Analyzer(clf, cfg.field_settings())


def _read(path: str, as_json: bool):
    from device.imageio import ImageError, read_image

    try:
        return read_image(path)
    except ImageError as exc:
        if as_json:
            print(json.dumps({"path": path, "error": str(exc)}))
        else:
            print(f"{path}: {exc}", file=sys.stderr)
        return None


def _classify(args) -> int:
    """A single-cell image through the device's path: its scale (given or measured), the finder's central
    cell, the bundle's physical crop and window, the device's words. Quality control is not applied:
    a single-cell image is not a field."""
    from device.analysis.cells import central_cell
    from device.model.analyzer import cell_json

    bundle, analyzer = _device_analyzer(args)
    status = 0
    for path in args.images:
        img = _read(path, args.json)
        if img is None:
            status = 1
            continue
        res = analyzer.analyze(img, skip_qc=True, um_per_px=args.um_per_px)
        found = central_cell([c.found for c in res.cells], img.shape)
        cell = next((c for c in res.cells if c.found is found), None)
        if args.json:
            print(json.dumps({"path": path, **(cell_json(cell) if cell else {"label": None, "category": None,
                                                                             "note": "no white cell found"}),
                              "scale": res.scale.to_dict(), "model": bundle.name}))
        elif cell is None:
            print(f"{path}: no white cell found (scale {res.scale.um_per_px:.4f} um/px, {res.scale.source})")
        else:
            c = cell_json(cell)
            note = f"  [{c['flag']}: left for review]" if c["flag"] else ""
            top = sorted(c["probabilities"].items(), key=lambda kv: -kv[1])[:3]
            print(f"{path}: {c['label']} ({c['category']}) {c['probability']:.3f}{note}  | "
                  + ", ".join(f"{k} {v:.3f}" for k, v in top))
    return status


def _load_config(path, data_dir: str | None = None):
    """The config file plus the settings saved from the page (in the data folder)."""
    from device.settings import load_effective

    return load_effective(config_path(path), data_dir)


def _serve(args) -> int:
    import logging

    from device.serve import PortBusy, bind_listener, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = _load_config(args.config, args.data_dir)
    if args.port is not None:
        cfg.server.port = args.port
    if args.host:
        cfg.server.host = args.host
    try:
        sock = bind_listener(cfg.server.host, cfg.server.port)  # before the data folder is created
    except PortBusy as exc:
        print(f"leukoscope: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"Leukoscope: data folder {cfg.data_dir}; starting on http://{cfg.server.host}:{cfg.server.port}/ "
          "(loading the model)", flush=True)
    return serve(cfg, sock)


def _analyze(args) -> int:
    from device.model.analyzer import cell_json

    bundle, analyzer = _device_analyzer(args)
    status = 0
    for path in args.images:
        img = _read(path, args.json)
        if img is None:
            status = 1
            continue
        res = analyzer.analyze(img, skip_qc=args.skip_qc, um_per_px=args.um_per_px)
        cells = [cell_json(c) for c in res.cells]
        if args.json:
            print(json.dumps({"path": path, "width": img.shape[1], "height": img.shape[0], "qc": res.qc.figures(),
                              "scale": res.scale.to_dict(),
                              "analysed": res.qc.ok or args.skip_qc, "cells": cells, "model": bundle.name}))
        else:
            sc = res.scale
            print(f"{path}: QC {res.qc.message} (edges {res.qc.edge_um:.2f} um, glass {res.qc.background:.0f}, "
                  f"cells cover {res.qc.cell_fraction:.2f}); scale {sc.um_per_px:.4f} um/px ({sc.source}"
                  + (f", {sc.red_cells} red cells, confidence {sc.confidence:.2f}" if sc.source == "red cells" else "")
                  + ")")
            for c in cells:
                print(f"  {c['box']}: {c['label']} ({c['category']}) {c['probability']:.3f}"
                      + (f" [{c['flag']}]" if c["flag"] else ""))
    return status


def _data_dir_of(args) -> Path:
    return _load_config(getattr(args, "config", None), getattr(args, "data_dir", None)).data_dir


def _backup(args) -> int:
    from device.records.backup import backup

    from device.records.store import DataDirLock

    data_dir = _data_dir_of(args)
    running = DataDirLock.holder(data_dir)
    m = backup(data_dir, Path(args.dest))
    print(f"backup written to {args.dest}: {m['counts']['samples']} samples, {m['counts']['fields']} fields, "
          f"{m['counts']['cells']} cells, {m['files']} image files"
          + (f"; {len(m['missing'])} deleted after the snapshot" if m["missing"] else "")
          + (f" (taken while the appliance runs, {running}: a consistent online snapshot)" if running else ""))
    return 0


def _restore(args) -> int:
    from device.records.backup import restore

    r = restore(Path(args.src), _data_dir_of(args), force=args.force)
    print(f"restored {r['manifest']['counts']['samples']} samples from {args.src}; "
          f"start-up check: {r['repair']}")
    return 0


def _retention(args) -> int:
    from device.records import samples
    from device.records.store import Store

    cfg = _load_config(args.config, args.data_dir)
    days = args.days if args.days is not None else cfg.storage.retention_days
    if days <= 0:
        print("retention is off (storage.retention_days = 0): nothing deleted")
        return 0
    deleted = samples.apply_retention(Store(cfg.data_dir), days)
    print(f"deleted {len(deleted)} sample(s) older than {days} days")
    return 0


def _model_install(args) -> int:
    from device.model import installed as models
    cfg = _load_config(args.config, args.data_dir)
    data = Path(args.bundle_file).read_bytes()
    b = models.install(data, cfg.data_dir, cfg.model.threads)
    print(f"installed {b.name} as the current model (the previous one is kept for roll-back); "
          "a running appliance switches to it within seconds")
    return 0


def _model_rollback(args) -> int:
    from device.model import installed as models
    cfg = _load_config(args.config, args.data_dir)
    b = models.rollback(cfg.data_dir)
    print(f"rolled back: {b.name} is the current model again")
    return 0


def _config_defaults(args) -> int:
    from device.config import commented_defaults

    sys.stdout.write(commented_defaults())
    return 0


def _cameras(args) -> int:
    from device.camera.picam import picamera2_cameras

    models, why = picamera2_cameras()
    if args.picamera2:  # for the installer: the sensor names, or exit status 1
        if models:
            print(" ".join(models))
        else:
            print(why, file=sys.stderr)
        return 0 if models else 1
    from device.camera import backends

    # every back-end that can look for hardware says what it finds (the registry; the most specialised first)
    for b in sorted(backends().values(), key=lambda b: b.rank, reverse=True):
        for line in b.detect() if b.detect else []:
            print(f"{b.name:<10} {line}")
    return 0


def _kiosk(args) -> int:
    import shutil
    import time
    import urllib.request

    health = args.url.rstrip("/") + "/health"
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() - t0 > args.wait:
            print(f"the appliance did not answer at {health} within {args.wait} s", file=sys.stderr)
            return 1
        time.sleep(1)
    browser = next((b for b in ("chromium-browser", "chromium") if shutil.which(b)), None)
    if browser is None:
        print("no Chromium installed (apt install chromium)", file=sys.stderr)
        return 1
    # --ozone-platform-hint=auto: a native Wayland window under labwc/wayfire, X11 elsewhere
    os.execvp(browser, [browser, "--kiosk", "--ozone-platform-hint=auto", "--noerrdialogs", "--disable-infobars", "--no-first-run",
                        "--disable-session-crashed-bubble", "--disable-features=Translate", "--incognito",
                        "--disable-background-networking", "--check-for-update-interval=31536000",
                        f"--app={args.url}"])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="leukoscope", description=(
        "Leukoscope: find, classify and count white blood cells. A screening aid, never a diagnosis."))
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model", help="model bundles")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser("info", help="show a bundle's metadata (default: the bundle the device uses)")
    add_bundle_options(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_model_info)
    q = msub.add_parser("install", help="validate a bundle and make it the current model (the old one is kept)")
    q.add_argument("bundle_file")
    q.add_argument("--config")
    q.add_argument("--data-dir")
    q.set_defaults(func=_model_install)
    q = msub.add_parser("rollback", help="go back to the previous model")
    q.add_argument("--config")
    q.add_argument("--data-dir")
    q.set_defaults(func=_model_rollback)

    p = sub.add_parser("classify", help="classify the central cell of single-cell images, as analyze does")
    p.add_argument("images", nargs="+")
    add_bundle_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--um-per-px", type=float, default=None,
                   help="the images' known pixel size (micrometres); default: measured from each image's red cells")
    p.set_defaults(func=_classify)

    p = sub.add_parser("serve", help="run the appliance: camera, analysis, storage and the local page")
    p.add_argument("--config", help=f"config TOML (default: {SYSTEM_CONFIG} if it exists, else built-in defaults)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir")
    p.set_defaults(func=_serve)

    p = sub.add_parser("analyze", help="run the whole-field pipeline on image files")
    p.add_argument("images", nargs="+")
    add_bundle_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--skip-qc", action="store_true", help="analyse fields even when they fail quality control")
    p.add_argument("--um-per-px", type=float, default=None,
                   help="the images' known pixel size (micrometres); default: measured from each field's red cells")
    p.set_defaults(func=_analyze)

    for name, func, helptext in (("backup", _backup, "write a consistent snapshot of records and images"),
                                 ("restore", _restore, "bring a backup back (stop the appliance first)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("dest" if name == "backup" else "src")
        p.add_argument("--config")
        p.add_argument("--data-dir")
        if name == "restore":
            p.add_argument("--force", action="store_true", help="replace the records already in the data folder")
        p.set_defaults(func=func)

    p = sub.add_parser("retention", help="delete records older than storage.retention_days (audited)")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    p.add_argument("--days", type=int, help="override the configured number of days")
    p.set_defaults(func=_retention)

    p = sub.add_parser("config", help="configuration helpers")
    csub = p.add_subparsers(dest="config_command", required=True)
    q = csub.add_parser("defaults", help="print every setting with its default, commented out")
    q.set_defaults(func=_config_defaults)

    p = sub.add_parser("cameras", help="list the cameras this machine has (Pi camera through picamera2, V4L2)")
    p.add_argument("--picamera2", action="store_true", help="print only the Pi camera sensors; exit 1 if none")
    p.set_defaults(func=_cameras)

    p = sub.add_parser("kiosk", help="wait for the appliance, then open its page full-screen")
    p.add_argument("--url", default="http://127.0.0.1:8080/")
    p.add_argument("--wait", type=float, default=300)
    p.set_defaults(func=_kiosk)

    commands = Commands(top=sub, model=msub)
    for name, register in discover_commands():
        try:
            register(commands)
        except Exception:  # noqa: BLE001 - a broken plug-in must not take the device commands with it
            log.exception("the %s commands could not be registered", name)
    return ap


@dataclass
class Commands:
    """What a ``leukoscope.commands`` entry point receives: the parsers it may add sub-commands to."""
    top: argparse._SubParsersAction  # leukoscope <command>
    model: argparse._SubParsersAction  # leukoscope model <command>


def _source_tree_entry_points() -> dict[str, str]:
    """The group as declared in the pyproject.toml of the source tree ``device`` was imported from, if any:
    a checkout run with PYTHONPATH, or an editable install whose metadata predates a new entry point."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    if data.get("project", {}).get("name") != "leukoscope":
        return {}
    return dict(data["project"].get("entry-points", {}).get(COMMAND_GROUP, {}))


def _load(value: str):
    module, _, attr = value.partition(":")
    obj = import_module(module.strip())
    for part in attr.strip().split(".") if attr.strip() else ():
        obj = getattr(obj, part)
    return obj


def discover_commands() -> list[tuple[str, object]]:
    """(name, register) of every ``leukoscope.commands`` entry point: the installed metadata's, plus the source
    tree's for names the metadata lacks. One that cannot be imported (its package or extra is not installed
    on this box) is left out with a log line; the device commands never depend on it."""
    found = {ep.name: ep.value for ep in metadata.entry_points(group=COMMAND_GROUP)}
    for name, value in _source_tree_entry_points().items():
        found.setdefault(name, value)
    out = []
    for name, value in sorted(found.items()):
        try:
            out.append((name, _load(value)))
        except Exception as exc:  # noqa: BLE001 - e.g. ModuleNotFoundError: training is not installed here
            log.info("leukoscope.commands %s (%s) unavailable: %s", name, value, exc)
    return out


def _operator_errors() -> tuple[type, ...]:
    """Errors whose message already tells the operator what is wrong and what to do: one line."""
    from device.records.backup import BackupError
    from device.model.bundle import BundleError
    from device.config import ConfigError
    from device.imageio import ImageError
    from device.records.store import StoreError

    return ConfigError, BundleError, StoreError, BackupError, ImageError, FileNotFoundError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - every failure ends in one line; unexpected ones also in a traceback
        if isinstance(exc, _operator_errors()):
            print(f"leukoscope {args.command}: {exc}", file=sys.stderr)
            return 2
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # the traceback goes to the journal (stderr); the last line stays readable for the operator
        logging.getLogger("leukoscope").exception("leukoscope %s failed", args.command)
        print(f"leukoscope {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
