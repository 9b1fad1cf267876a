"""The capture loop: one worker thread owns the camera and runs capture -> analysis -> storage.

The web layer only queues requests and reads state, so a slow analysis never
blocks a page, and the camera is touched by one thread only. Each request is a
Future: a caller that gives up cancels it, and a job already running is
abandoned before its rows commit, so a capture the page reported as failed is
never saved later. A supervisor restarts the worker (with back-off) if it dies.
"""
from __future__ import annotations

import logging
import itertools
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from device.records import samples
from device.camera.base import CameraError
from device.camera.supervised import SupervisedCamera
from device.imageio import encode_jpeg
from device.model.analyzer import Analyzer, cell_json
from device.records.store import StorageFull, Store, StoreError


log = logging.getLogger("leukoscope.capture")
# A job running longer than this means the loop is stuck, not busy (fields are bounded by
# imageio.MAX_FIELD_PIXELS, which analyse in seconds).
MAX_JOB_SECONDS = 90.0


class CaptureError(RuntimeError):
    """A capture that did not happen; the message is for the operator."""


@dataclass
class _Job:
    sample_id: int
    user: str
    image: object | None = None  # an uploaded field instead of the camera's
    source: str = ""
    future: Future = field(default_factory=Future)
    state: str = "waiting"  # waiting -> committing, or -> abandoned by a caller who gave up
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def abandon(self) -> bool:
        """The caller gave up: True unless the rows are already being committed."""
        with self._lock:
            if self.state == "committing":
                return False
            self.state = "abandoned"
            return True

    def may_commit(self) -> bool:
        """Asked by the worker inside the write transaction, just before the rows are written."""
        with self._lock:
            if self.state == "abandoned":
                return False
            self.state = "committing"
            return True


class CaptureLoop:
    def __init__(self, camera: SupervisedCamera, analyzer: Analyzer, store: Store, rules,
                 preview_interval: float = 0.2):
        self.camera, self.analyzer, self.store, self.rules = camera, analyzer, store, rules
        self.preview_interval = preview_interval
        # (priority, order, job): the operator's camera captures go before queued uploads (priority 1)
        self._jobs: queue.PriorityQueue = queue.PriorityQueue(maxsize=8)
        self._order = itertools.count()
        self._settled = threading.Condition()  # notified when a job ends: pages waiting for the operator
        self._jobs_done = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._preview_jpeg: bytes | None = None
        self._preview_wanted_until = 0.0
        self._preview_cond = threading.Condition()
        self.heartbeat = time.monotonic()
        self.busy = False
        self.busy_since: float | None = None
        self.captures = 0
        self.discarded = 0  # results thrown away because their caller had given up
        self.restarts = 0
        self.last_error: str | None = None
        self._pending_camera: SupervisedCamera | None = None
        self.on_idle = []  # callables run on this thread between captures (model switch, ...)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="capture-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the capture in progress (never half-written), then stop."""
        self._stop.set()
        try:
            self._jobs.put_nowait((-1, next(self._order), None))
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self.camera.close()

    def alive(self, max_silence: float = 30.0, max_job: float = MAX_JOB_SECONDS) -> bool:
        """The worker runs and is either idling (heartbeat fresh) or within one job's time limit:
        a long analysis is not a hang, a job stuck past the limit is."""
        if self._thread is None or not self._thread.is_alive():
            return False
        since = self.busy_since
        if since is not None:
            return time.monotonic() - since < max_job
        return time.monotonic() - self.heartbeat < max_silence

    # -- requests from the web layer ---------------------------------------
    def capture(self, sample_id: int, user: str, timeout: float = 60.0, image=None, source: str = "") -> dict:
        """Capture from the camera (or analyse ``image``, an uploaded RGB field) into the sample."""
        job = self._queue(_Job(sample_id, user, image, source), wait=2.0)
        try:
            return job.future.result(timeout)
        except FutureTimeout:
            pass
        if job.future.cancel() or job.abandon():
            raise CaptureError("the capture took too long and was cancelled; nothing was saved. "
                               "Check the camera and try again") from None
        return job.future.result(30.0)  # its rows are being committed right now: report what was saved

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the capture in progress (or about to start) is done, at most ``timeout`` s: page views and
        exports call this first, so the operator's capture gets the CPU instead of sharing it with the crowd."""
        deadline = time.monotonic() + timeout
        with self._settled:
            seen = self._jobs_done
            # at most the job in progress (or about to start): under a steady stream of captures a page
            # waits for one of them, not for the whole queue
            while (self.busy or not self._jobs.empty()) and self._jobs_done == seen:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._settled.wait(min(left, 0.05))
        return True

    def submit(self, sample_id: int, user: str) -> Future:
        """Queue a capture without waiting for it (the push-button); the Future says how it went."""
        return self._queue(_Job(sample_id, user), wait=0).future

    def _queue(self, job: _Job, wait: float) -> _Job:
        if self._stop.is_set():
            raise CaptureError("the appliance is shutting down")
        try:
            item = (0 if job.image is None else 1, next(self._order), job)
            self._jobs.put(item, timeout=wait) if wait else self._jobs.put_nowait(item)
        except queue.Full:
            raise CaptureError("the appliance is busy with earlier captures; try again in a moment") from None
        return job

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
                "queued": self._jobs.qsize(), "alive": self.alive(), "restarts": self.restarts,
                "error": self.last_error, "discarded": self.discarded}

    # -- the worker ---------------------------------------------------------
    def _supervise(self) -> None:
        """Run the worker; if it dies, log why, show it on /health and the page, and restart it
        after a growing pause (0.5 s doubling to 30 s; back to 0.5 s after a minute without trouble)."""
        delay = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._run()
            except Exception as exc:  # noqa: BLE001 - anything: the loop must come back
                log.exception("capture loop died; restarting in %.1f s", delay)
                self.restarts += 1
                self.last_error = f"capture loop restarted after an error ({type(exc).__name__}: {exc})"
                self.busy, self.busy_since = False, None
                if time.monotonic() - started > 60:
                    delay = 0.5
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        # drain: refuse what is still queued rather than leave pages waiting
        while True:
            try:
                job = self._jobs.get_nowait()[2]
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(CaptureError("the appliance is shutting down"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            if self._pending_camera is not None:
                old, self.camera, self._pending_camera = self.camera, self._pending_camera, None
                old.close()
            try:
                job = self._jobs.get(timeout=self.preview_interval)[2]
            except queue.Empty:
                job = None
                self._idle()
            if job is None or not job.future.set_running_or_notify_cancel():
                continue  # a stop marker, or a job its caller cancelled while it waited
            self.busy, self.busy_since = True, time.monotonic()
            try:
                job.future.set_result(self._capture(job))
            except samples.Discarded:
                self.discarded += 1
                log.info("capture for sample %s discarded: its caller had given up", job.sample_id)
                job.future.set_exception(CaptureError("the capture took too long and was cancelled; nothing was saved"))
            except (CaptureError, CameraError, samples.RecordError, StorageFull, StoreError) as exc:
                msg = str(exc) if not isinstance(exc, StorageFull) else exc.strerror or str(exc)
                job.future.set_exception(CaptureError(msg))
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any single bad capture
                log.exception("capture into sample %s failed", job.sample_id)
                job.future.set_exception(CaptureError(f"capture failed unexpectedly ({type(exc).__name__}: {exc})"))
            finally:
                self.busy, self.busy_since = False, None
                self.heartbeat = time.monotonic()
                with self._settled:
                    self._jobs_done += 1
                    self._settled.notify_all()

    def _idle(self) -> None:
        for fn in self.on_idle:
            try:
                fn()
            except Exception:  # noqa: BLE001 - an idle task must never stop captures; but say why
                log.exception("idle task %s failed", getattr(fn, "__name__", fn))
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
        # Camera frames stay full size: the analysis bounds its own cost (one resample to a bounded
        # copy) and cuts the classifier's crops from the full frame. Uploads were fitted at decoding.
        analysis = self.analyzer.analyze(image)
        model = getattr(self.analyzer.classifier, "bundle", None)
        calibration = getattr(self.analyzer.classifier, "calibration", None)
        fid = samples.save_field(self.store, job.sample_id, image, analysis, job.user, captured_at=captured_at,
                                 source=source, may_commit=job.may_commit, model=model,
                                 calibration=calibration)
        self.captures += 1
        summary = samples.summary_of(self.store, job.sample_id, self.rules)
        return {
            "field_id": fid, "qc": analysis.qc.figures(), "qc_ok": analysis.qc.ok, "qc_message": analysis.qc.message,
            # boxes are in the frame's pixels (the stored image may be smaller): the page draws them on this size
            "width": int(image.shape[1]), "height": int(image.shape[0]),
            "scale": analysis.scale.to_dict() if analysis.scale else None,
            "cells": [cell_json(c, probabilities=False) for c in analysis.cells],
            "timings_ms": {k: round(v, 2) for k, v in analysis.timings_ms.items()},
            "summary": summary.to_dict(),
        }
