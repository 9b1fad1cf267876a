"""Everything one appliance process owns, built from the config: store, model, camera, capture loop."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from device.bundle import Bundle, BundleError, load_bundle
from device.camera import SupervisedCamera, make_camera
from device.capture import CaptureLoop
from device.classifier import Classifier
from device.config import AppConfig
from device.models import load_active, models_dir
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
    active: tuple[int, str] | None = None  # the open sample shown on a capture page: what the button captures
    button: object | None = None
    _model_key: tuple | None = None
    _model_checked: float = 0.0

    def check_model(self, every: float = 2.0) -> None:
        """Switch to a newly installed (or rolled-back) bundle; keep the last good one if it is refused."""
        if self.config.model.bundle:
            return  # a bundle named in the config is not replaced behind its back
        t = time.monotonic()
        if t - self._model_checked < every:
            return
        self._model_checked = t
        path = models_dir(self.config.data_dir) / "current.lkb"
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        key = (st.st_mtime_ns, st.st_size)
        if key == self._model_key:
            return
        self._model_key = key
        try:
            bundle = load_bundle(path)
            classifier = Classifier(bundle, threads=self.config.model.threads)
        except BundleError as exc:
            self.model_problems.append(f"new model refused, still using {self.bundle.name}: {exc}")
            log.error("new model refused: %s", exc)
            self.store.audit("system", "model-refused", str(path), str(exc))
            return
        if bundle.sha256 == self.bundle.sha256 and bundle.name == self.bundle.name:
            return
        previous = self.bundle.name
        self.bundle, self.classifier = bundle, classifier
        self.analyzer.classifier = classifier
        self.store.audit("system", "model-switched", bundle.name, {"from": previous, "sha256": bundle.sha256})
        log.info("model switched from %s to %s", previous, bundle.name)

    def press(self) -> None:
        """The push-button: capture into the sample on screen."""
        if self.active is None:
            log.warning("push-button pressed with no open sample on screen")
            return
        self.loop.submit(*self.active)

    def apply_config(self, new: AppConfig) -> list[str]:
        """Use changed settings now; returns what was applied."""
        old, applied = self.config, []
        self.config = new
        self.analyzer.settings = new.field_settings()
        self.loop.rules = new.sample.flags
        # The pixel size is the analysis's business: changing it needs no camera restart.
        if {**asdict(old.camera), "um_per_pixel": 0} != {**asdict(new.camera), "um_per_pixel": 0}:
            self.loop.replace_camera(SupervisedCamera(camera_from_config(new)))
            applied.append("camera restarted")
        applied.append("settings in use")
        return applied

    def stop(self) -> None:
        if self.button is not None:
            self.button.close()
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
    analyzer = Analyzer(classifier, cfg.field_settings())
    camera = SupervisedCamera(camera_from_config(cfg))
    loop = CaptureLoop(camera, analyzer, store, cfg.sample.flags)
    runtime = Runtime(cfg, store, bundle, classifier, analyzer, camera, loop, repair, problems)
    current = models_dir(cfg.data_dir) / "current.lkb"
    if current.exists():
        st = current.stat()
        runtime._model_key = (st.st_mtime_ns, st.st_size)
    loop.on_idle.append(runtime.check_model)
    if start:
        camera.poll()
        loop.start()
        if cfg.gpio.button_pin:
            from device.button import start_button

            try:
                runtime.button = start_button(cfg.gpio.button_pin, runtime.press)
            except Exception as exc:  # noqa: BLE001 - no GPIO on this machine: the page still works
                log.error("capture button on GPIO %d not available: %s", cfg.gpio.button_pin, exc)
    return runtime
