"""Everything one appliance process owns, built from the config: store, model, camera, capture loop."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from device.bundle import Bundle
from device.camera import SupervisedCamera, make_camera
from device.capture import CaptureLoop
from device.classifier import Classifier
from device.config import AppConfig
from device.models import load_active
from device.pipeline import Analyzer
from device.store import RepairReport, Store

log = logging.getLogger("leukoscope")


@dataclass
class Runtime:
    config: AppConfig
    store: Store
    bundle: Bundle
    classifier: Classifier
    analyzer: Analyzer
    camera: SupervisedCamera
    loop: CaptureLoop
    repair: RepairReport
    model_problems: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.loop.stop()
        self.store.close()


def camera_from_config(cfg: AppConfig):
    c = cfg.camera
    return make_camera(c.backend, folder=c.folder or None, loop=c.loop, device=c.device, width=c.width,
                       height=c.height, still_size=c.still_size or None, preview_size=c.preview_size)


def build_runtime(cfg: AppConfig, start: bool = True) -> Runtime:
    store = Store(cfg.data_dir, min_free_mb=cfg.storage.min_free_mb)
    repair = store.consistency_check(repair=True)
    if repair.repaired:
        log.warning("start-up check repaired %d item(s): %s", repair.repaired, repair.to_dict())
    bundle, classifier, problems = load_active(cfg.model.bundle, cfg.data_dir, cfg.model.threads)
    analyzer = Analyzer(classifier, cfg.cells, cfg.qc)
    camera = SupervisedCamera(camera_from_config(cfg))
    loop = CaptureLoop(camera, analyzer, store, cfg.sample.flags)
    if start:
        camera.poll()
        loop.start()
    return Runtime(cfg, store, bundle, classifier, analyzer, camera, loop, repair, problems)
