"""The store-and-forward thread: sends queued samples to the district, fetches verdicts back.

The queue lives in the box's database (filled by the finish itself), so nothing is held in memory: a restart or
a power cut resumes where the database says. A row is marked sent only after the district confirmed every
object; a crash between the district's answer and that mark sends the sample again, which is harmless: the
objects' UIDs are deterministic and Orthanc keeps one instance per UID. A failing row waits longer each time
(doubling up to ``retry_max_s``), so a district that refuses cannot make the box loop.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from datetime import datetime, timezone

from device.district import dicom
from device.district.export import sample_record
from device.district.link import Link, LinkDown, LinkError
from device.records import district as outbox

log = logging.getLogger("leukoscope.district")


class Sender:
    def __init__(self, store, config_of, make_pdf=None):
        """``config_of()``: the current AppConfig (Settings may change it while running); ``make_pdf(sample_id)``:
        the sample's PDF report bytes (None: sent without it)."""
        self.store = store
        self.config_of = config_of
        self.make_pdf = make_pdf
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.link_state = "not configured"
        self.link_error: str | None = None
        self.down_since: str | None = None
        self.last_poll: str | None = None
        self.poll_error: str | None = None
        self._next_poll = 0.0
        self._refused_verdicts: set[str] = set()

    # -- life ---------------------------------------------------------------------------------------
    def start(self) -> "Sender":
        self.thread = threading.Thread(target=self._run, name="district-sender", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if not self.thread.is_alive():
                self._stop.clear()  # stopped: may be stepped by hand or started again

    def wake(self) -> None:
        """Settings changed or "Test the link" answered: try now."""
        self._next_poll = 0.0
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
            except Exception as exc:  # noqa: BLE001 - the thread must never die; the next step retries
                log.exception("district sender step failed")
                self.link_error = f"internal error: {exc}"
                wait = 5.0
            self._wake.wait(wait)
            self._wake.clear()

    # -- one pass -----------------------------------------------------------------------------------
    def step(self) -> float:
        """Send what is due, poll verdicts when their time comes; returns seconds until the next pass."""
        cfg = self.config_of().district
        if not cfg.url:
            self.link_state = "not configured"
            return 30.0
        link = Link.from_config(cfg)
        for row in outbox.due(self.store, limit=20):
            if self._stop.is_set():
                return 0
            if not self._send(link, row, cfg):
                break  # the link is down: the others wait for the next pass
        if time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + cfg.poll_seconds
            self.poll_verdicts(link)
        nxt = outbox.next_due_at(self.store)
        wait = float(cfg.poll_seconds)
        if nxt:
            wait = min(wait, max(0.0, (datetime.fromisoformat(nxt) - datetime.now(timezone.utc)).total_seconds()))
        return max(0.05, min(wait, max(0.0, self._next_poll - time.monotonic())))

    def _send(self, link: Link, row, cfg) -> bool:
        try:
            rec = sample_record(self.store, row["sample_id"], row["revision"], self.config_of().web.clinic_name,
                                pdf=self.make_pdf(row["sample_id"]) if self.make_pdf else None)
            objs = dicom.sample_objects(rec, send_patient=cfg.send_patient)
            parts = [dicom.to_bytes(o) for o in objs]
            link.store(parts, [str(o.SOPInstanceUID) for o in objs])
        except LinkError as exc:
            down = isinstance(exc, LinkDown)
            delay = self._backoff(row["attempts"], cfg)
            outbox.mark_failed(self.store, row["id"], str(exc), delay, link_down=down)
            self.link_state, self.link_error = ("down" if down else "refused"), str(exc)
            if self.down_since is None:
                self.down_since = outbox.now()
            log.warning("sample %s not sent (retry in %.0f s): %s", row["sample_code"], delay, exc)
            return not down
        except Exception as exc:  # noqa: BLE001 - e.g. a missing image: say why, keep the row, go on
            delay = self._backoff(row["attempts"], cfg)
            outbox.mark_failed(self.store, row["id"], f"could not prepare the sample: {exc}", delay, link_down=False)
            log.exception("sample %s could not be prepared", row["sample_code"])
            return True
        outbox.mark_sent(self.store, row["id"], sum(map(len, parts)), rec.study_uid())
        self.link_state, self.link_error, self.down_since = "up", None, None
        return True

    @staticmethod
    def _backoff(attempts: int, cfg) -> float:
        base = min(float(cfg.retry_max_s), float(cfg.retry_base_s) * 2 ** min(int(attempts), 20))
        return base * (0.75 + random.random() * 0.5)  # jitter: many boxes back on line do not all call at once

    # -- verdicts -----------------------------------------------------------------------------------
    def poll_verdicts(self, link: Link) -> int:
        from device.district.verdicts import fetch_verdicts

        try:
            n = fetch_verdicts(self.store, link, self._refused_verdicts)
        except LinkError as exc:
            self.poll_error = str(exc)
            return 0
        self.poll_error = None
        self.last_poll = outbox.now()
        return n

    def status(self) -> dict:
        q = outbox.queue_summary(self.store)
        return {"configured": bool(self.config_of().district.url), "link": self.link_state,
                "error": self.link_error, "down_since": self.down_since, "last_poll": self.last_poll,
                "poll_error": self.poll_error, "alive": bool(self.thread and self.thread.is_alive())} | q
