"""The capture loop: one worker thread owns the camera and runs capture -> analysis -> storage.

The web layer only queues requests and reads state, so a slow analysis never
blocks a page, and the camera is touched by one thread only.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from device import records
from device.camera import CameraError, SupervisedCamera
from device.imageio import encode_jpeg
from device.pipeline import Analyzer
from device.store import StorageFull, Store


class CaptureError(RuntimeError):
    """A capture that did not happen; the message is for the operator."""


@dataclass
class _Job:
    sample_id: int
    user: str
    image: object | None = None  # an uploaded field instead of the camera's
    source: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: str | None = None


class CaptureLoop:
    def __init__(self, camera: SupervisedCamera, analyzer: Analyzer, store: Store, rules,
                 preview_interval: float = 0.2):
        self.camera, self.analyzer, self.store, self.rules = camera, analyzer, store, rules
        self.preview_interval = preview_interval
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=8)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._preview_jpeg: bytes | None = None
        self._preview_wanted_until = 0.0
        self._preview_cond = threading.Condition()
        self.heartbeat = time.monotonic()
        self.busy = False
        self.captures = 0
        self._pending_camera: SupervisedCamera | None = None
        self.on_idle = []  # callables run on this thread between captures (model switch, ...)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the capture in progress (never half-written), then stop."""
        self._stop.set()
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self.camera.close()

    def alive(self, max_silence: float = 30.0) -> bool:
        return self._thread is not None and self._thread.is_alive() and time.monotonic() - self.heartbeat < max_silence

    # -- requests from the web layer ---------------------------------------
    def capture(self, sample_id: int, user: str, timeout: float = 60.0, image=None, source: str = "") -> dict:
        """Capture from the camera (or analyse ``image``, an uploaded RGB field) into the sample."""
        job = _Job(sample_id, user, image, source)
        try:
            self._jobs.put(job, timeout=2.0)
        except queue.Full:
            raise CaptureError("the appliance is busy with earlier captures; try again in a moment") from None
        if not job.done.wait(timeout):
            raise CaptureError("the capture is taking too long; check the camera")
        if job.error:
            raise CaptureError(job.error)
        return job.result

    def submit(self, sample_id: int, user: str) -> None:
        """Queue a capture without waiting for it (the push-button)."""
        try:
            self._jobs.put_nowait(_Job(sample_id, user))
        except queue.Full:
            raise CaptureError("the appliance is busy with earlier captures") from None

    def replace_camera(self, camera: SupervisedCamera) -> None:
        """Switch camera back-end; done by the worker between captures, never during one."""
        self._pending_camera = camera

    def want_preview(self) -> None:
        self._preview_wanted_until = time.monotonic() + 3.0

    def preview_jpeg(self, wait: float = 1.0) -> bytes | None:
        self.want_preview()
        with self._preview_cond:
            if self._preview_jpeg is None:
                self._preview_cond.wait(wait)
            return self._preview_jpeg

    def next_preview(self, last: bytes | None, wait: float = 1.0) -> bytes | None:
        self.want_preview()
        with self._preview_cond:
            if self._preview_jpeg is last:
                self._preview_cond.wait(wait)
            return self._preview_jpeg

    def state(self) -> dict:
        return {"camera": self.camera.state(), "busy": self.busy, "captures": self.captures,
                "queued": self._jobs.qsize(), "alive": self.alive()}

    # -- the worker ---------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            if self._pending_camera is not None:
                old, self.camera, self._pending_camera = self.camera, self._pending_camera, None
                old.close()
            try:
                job = self._jobs.get(timeout=self.preview_interval)
            except queue.Empty:
                job = None
                self._idle()
            if job is None:
                continue
            self.busy = True
            try:
                job.result = self._capture(job)
            except (CaptureError, CameraError, records.RecordError, StorageFull) as exc:
                job.error = str(exc) if not isinstance(exc, StorageFull) else exc.strerror or str(exc)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any single bad capture
                job.error = f"capture failed unexpectedly ({type(exc).__name__}: {exc})"
            finally:
                self.busy = False
                job.done.set()
        # drain: refuse what is still queued rather than leave pages waiting
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.error = "the appliance is shutting down"
                job.done.set()

    def _idle(self) -> None:
        for fn in self.on_idle:
            try:
                fn()
            except Exception:  # noqa: BLE001 - an idle task must never stop captures
                pass
        if time.monotonic() < self._preview_wanted_until:
            try:
                jpeg = encode_jpeg(self.camera.preview(), quality=75)
            except CameraError:
                jpeg = None
            with self._preview_cond:
                self._preview_jpeg = jpeg
                self._preview_cond.notify_all()
        else:
            self.camera.poll()

    def _capture(self, job: _Job) -> dict:
        self.store.check_space()
        if job.image is not None:
            image, captured_at, source = job.image, None, job.source
        else:
            try:
                frame = self.camera.capture()
            except CameraError as exc:
                raise CaptureError(f"camera not available: {exc}") from None
            image, captured_at, source = frame.image, frame.captured_at, frame.source
        analysis = self.analyzer.analyze(image)
        fid = records.save_field(self.store, job.sample_id, image, analysis, job.user,
                                 captured_at=captured_at, source=source)
        self.captures += 1
        summary = records.summary_of(self.store, job.sample_id, self.rules)
        return {
            "field_id": fid, "qc": analysis.qc.figures(), "qc_ok": analysis.qc.ok, "qc_message": analysis.qc.message,
            "cells": [{"box": list(c.found.box), "label": c.prediction.shown_label, "predicted": c.prediction.label,
                       "category": c.prediction.category if not c.prediction.flag else "uncertain",
                       "probability": round(c.prediction.probability, 4), "flag": c.prediction.flag}
                      for c in analysis.cells],
            "timings_ms": {k: round(v, 2) for k, v in analysis.timings_ms.items()},
            "summary": summary.to_dict(),
        }
