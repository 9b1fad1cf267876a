"""Everything one appliance process owns, built from the config: store, model, camera, capture loop."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from device.model.bundle import Bundle, BundleError
from device.camera import camera_from
from device.camera.supervised import SupervisedCamera
from device.box.capture import CaptureLoop
from device.model.classifier import Classifier
from device.config import AppConfig
from device.model.installed import load_active, load_validated, models_dir
from device.model.analyzer import Analyzer
from device.records.store import RepairReport, Store, StoreError

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
    # what the push-button captures into: chosen on a sample's page ("Use the push-button here"),
    # cleared when that sample finishes; (sample id, sample code, user)
    button_target: tuple[int, str, str] | None = None
    button_message: str = ""  # the last refused or failed press, shown on the capture page
    button: object | None = None
    district: object | None = None  # the district sender (issue 25), started with the appliance
    _model_key: tuple | None = None
    _model_checked: float = 0.0

    def use_calibration(self) -> None:
        """Classify with the active site calibration of the bundle in use (checked: file checksum, bundle);
        a refused one is reported and the box classifies without it."""
        from device.records import calibrations

        cal, problem = calibrations.load_active(self.store, self.bundle)
        if problem:
            self.model_problems.append(problem)
            log.error("%s", problem)
        self.classifier.calibration = cal

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
            bundle, classifier = load_validated(path, threads=self.config.model.threads)
        except BundleError as exc:
            self.model_problems.append(f"new model refused, still using {self.bundle.name}: {exc}")
            log.error("new model refused: %s", exc)
            self.store.audit("system", "model-refused", str(path), str(exc))
            return
        if bundle.sha256 == self.bundle.sha256 and bundle.name == self.bundle.name:
            return
        previous = self.bundle.name
        self.bundle, self.classifier = bundle, classifier
        self.use_calibration()  # a calibration belongs to one bundle: the new one's, if it has one
        self.analyzer.classifier = classifier
        self.store.audit("system", "model-switched", bundle.name, {"from": previous, "sha256": bundle.sha256})
        log.info("model switched from %s to %s", previous, bundle.name)

    def press(self) -> None:
        """The push-button: capture into the sample chosen for it; a refused press is logged and shown."""
        target = self.button_target
        if target is None:
            return self._button_refused("push-button pressed, but no sample is chosen for it: open a sample "
                                        "and choose \"Use the push-button here\"")
        sid, code, user = target
        try:
            future = self.loop.submit(sid, user)
        except Exception as exc:  # noqa: BLE001 - CaptureError and anything else: say why
            return self._button_refused(f"push-button capture into {code} refused: {exc}")
        self.button_message = ""

        def done(f):
            exc = f.exception() if not f.cancelled() else None
            if exc is not None:
                self._button_refused(f"push-button capture into {code} failed: {exc}")

        future.add_done_callback(done)

    def _button_refused(self, message: str) -> None:
        log.warning("%s", message)
        self.button_message = message

    def choose_button_target(self, sample_id: int, code: str, user: str) -> None:
        self.button_target = (sample_id, code, user)
        self.button_message = ""
        self.store.audit(user, "button-target", f"sample:{sample_id}")

    def sample_finished(self, sample_id: int) -> None:
        if self.button_target and self.button_target[0] == sample_id:
            self.button_target = None

    def health(self) -> tuple[bool, dict]:
        """What /health reports: the capture loop, the storage, and the last error of each."""
        state = self.loop.state()
        problems = []
        try:
            self.store.verify()
        except StoreError as exc:
            problems.append(str(exc))
        if not state["alive"]:
            problems.append("the capture loop is not responding")
        ok = not problems
        if state["error"]:
            problems.append(state["error"])
        # a missing reserve is reported but does not fail the watchdog: a restart would not free space
        if self.store.reserve_problem:
            problems.append(self.store.reserve_problem)
        cam = state["camera"]
        # the camera's name and its last error say why a box shows no live view, without signing in
        return ok, {"ok": ok, "camera": cam["status"], "camera_name": cam["name"], "camera_error": cam["error"],
                    "model": self.bundle.name,
                    "capture_loop": {"alive": state["alive"], "restarts": state["restarts"], "busy": state["busy"]},
                    "problems": problems} | self._district_health()

    def _district_health(self) -> dict:
        if self.district is None:
            return {}
        try:
            return {"district": self.district.status()}
        except Exception as exc:  # noqa: BLE001 - /health must answer even if the queue cannot be read
            return {"district": {"error": str(exc)}}

    def apply_config(self, new: AppConfig) -> list[str]:
        """Use changed settings now; returns what was applied."""
        old, applied = self.config, []
        self.config = new
        self.analyzer.settings = new.field_settings()
        self.loop.rules = new.sample.flags
        self.store.min_free_mb = new.storage.min_free_mb
        # The pixel size is the analysis's business: changing it needs no camera restart.
        if {**asdict(old.camera), "um_per_pixel": 0} != {**asdict(new.camera), "um_per_pixel": 0}:
            self.loop.replace_camera(SupervisedCamera(camera_from_config(new)))
            applied.append("camera restarted")
        applied.append("settings in use")
        if self.district is not None and old.district != new.district:
            self.district.wake()
        if old.server != new.server:
            applied.append("server settings at the next restart")
        return applied

    def stop(self) -> None:
        if self.district is not None:
            self.district.stop()
        if self.button is not None:
            self.button.close()
        self.loop.stop()
        self.store.release_lock()


def camera_from_config(cfg: AppConfig):
    return camera_from(cfg.camera)


def reserve_mb(data_dir) -> int:
    """16 MB, or a twentieth of a small disk: enough for sign-in and deleting samples when full."""
    import os
    import shutil

    os.makedirs(data_dir, exist_ok=True)
    return max(1, min(16, shutil.disk_usage(data_dir).total // 20 // (1024 * 1024)))


def build_runtime(cfg: AppConfig, start: bool = True) -> Runtime:
    store = Store(cfg.data_dir, min_free_mb=cfg.storage.min_free_mb, exclusive=True, reserve_mb=reserve_mb(cfg.data_dir))
    try:
        return _build(cfg, store, start)
    except BaseException:
        store.release_lock()
        raise


def _build(cfg: AppConfig, store: Store, start: bool) -> Runtime:
    repair = store.consistency_check(repair=True)
    store.keep_reserve()
    if repair.repaired:
        log.warning("start-up check repaired %d item(s): %s", repair.repaired, repair.to_dict())
    bundle, classifier, problems = load_active(cfg.model.bundle, cfg.data_dir, cfg.model.threads)
    analyzer = Analyzer(classifier, cfg.field_settings())
    camera = SupervisedCamera(camera_from_config(cfg))
    loop = CaptureLoop(camera, analyzer, store, cfg.sample.flags)
    runtime = Runtime(cfg, store, bundle, classifier, analyzer, camera, loop, repair, problems)
    runtime.use_calibration()
    current = models_dir(cfg.data_dir) / "current.lkb"
    if current.exists():
        st = current.stat()
        runtime._model_key = (st.st_mtime_ns, st.st_size)
    loop.on_idle.append(runtime.check_model)
    loop.on_idle.append(store.keep_reserve)
    if start:
        from device.district.sender import Sender

        runtime.district = Sender(store, lambda: runtime.config).start()
        camera.poll()
        loop.start()
        if cfg.gpio.button_pin:
            from device.box.button import start_button

            try:
                runtime.button = start_button(cfg.gpio.button_pin, runtime.press)
            except Exception as exc:  # noqa: BLE001 - no GPIO on this machine: the page still works
                log.error("capture button on GPIO %d not available: %s", cfg.gpio.button_pin, exc)
    return runtime
