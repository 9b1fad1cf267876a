"""The Raspberry Pi camera back-end, through picamera2 (imported only when used)."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from device.camera.base import Backend, CameraError, Frame, _now, _reason
from device.schema import N_, setting

log = logging.getLogger("leukoscope.camera")


def _import_picamera2():
    """picamera2's class, or CameraError saying why not.

    Importing it can fail with anything, not only ImportError: an apt C extension it pulls in
    (simplejpeg) built against another numpy major raises ValueError or ImportError from inside.
    """
    try:
        from picamera2 import Picamera2
    except ModuleNotFoundError as exc:
        if exc.name == "picamera2":
            raise CameraError("picamera2 is not installed (on Raspberry Pi OS: apt install python3-picamera2)") from None
        raise CameraError(f"picamera2 cannot be imported ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - e.g. "numpy.dtype size changed": the venv's numpy does not match apt's
        raise CameraError(f"picamera2 cannot be imported ({_reason(exc)}); the venv's numpy must match "
                          "the major version of apt's python3-numpy (re-run systemd/install.sh)") from None
    return Picamera2


def picamera2_cameras() -> tuple[list[str], str | None]:
    """The sensor models libcamera lists (e.g. ["imx477"]) and, when there are none, why."""
    try:
        Picamera2 = _import_picamera2()
        models = [str(c.get("Model", "unknown")) for c in Picamera2.global_camera_info()]
    except Exception as exc:  # noqa: BLE001 - detection must never stop an install or a start
        return [], str(exc) if isinstance(exc, CameraError) else _reason(exc)
    return models, None if models else "libcamera lists no camera (check the ribbon cable, then reboot)"


def detect_picamera2() -> list[str]:
    """The Pi camera sensors attached; [] when none or picamera2 is unusable."""
    return picamera2_cameras()[0]


def _close_bounded(cam, timeout: float) -> bool:
    """stop() and close() a Picamera2, each even if the other raises, without waiting forever.

    picamera2 keeps every instance (and its claim on the camera) alive until close(), so a failed
    configure or start must close too, or every reopen fails as "busy". A sensor that has stalled
    can make stop() hang: then the instance is abandoned to a daemon thread after ``timeout``.
    """
    def shut():
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception:  # noqa: BLE001 - closing a camera that has gone away must not raise
                pass

    t = threading.Thread(target=shut, name="picamera2-close", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        log.error("the Pi camera did not close within %g s; it may stay claimed until the service restarts", timeout)
        return False
    return True


def lores_to_rgb(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """picamera2's YUV420 lores array, shape (h*3/2, stride) with padding, to RGB (h, w, 3).

    The Y rows are ``stride`` bytes, the U and V rows ``stride/2``: cropping the 2-D array to
    ``width`` would mix chroma rows whenever width != stride.
    """
    stride = yuv.shape[1]
    flat = np.ascontiguousarray(yuv).reshape(-1)
    ch, cw, cs = height // 2, width // 2, stride // 2
    y = flat[: height * stride].reshape(height, stride)[:, :width]
    u_at = height * stride
    u = flat[u_at: u_at + ch * cs].reshape(ch, cs)[:, :cw]
    v_at = u_at + ch * cs
    v = flat[v_at: v_at + ch * cs].reshape(ch, cs)[:, :cw]
    i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(height * 3 // 2, width)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)


class Picamera2Camera:
    """The Raspberry Pi camera: a full-resolution still stream plus a low-resolution preview stream.

    picamera2 comes from apt (python3-picamera2) and is imported only here, only when used. Every
    failure, from the import to a capture that never returns, becomes a CameraError, so
    SupervisedCamera closes the camera and tries again later instead of the process dying.
    """

    def __init__(self, still_size: tuple[int, int] | None = None, preview_size: tuple[int, int] = (640, 480),
                 timeout: float = 5.0):
        self.still_size, self.preview_size = still_size, preview_size
        self.timeout = timeout  # seconds one capture may take before the sensor counts as stalled
        self.name = "picamera2"
        self._cam = None
        self._lores_size = tuple(preview_size)

    def open(self) -> None:
        Picamera2 = _import_picamera2()
        try:
            found = Picamera2.global_camera_info()
        except Exception as exc:  # noqa: BLE001
            raise CameraError(f"Pi camera not available ({_reason(exc)})") from None
        if not found:
            raise CameraError("no Pi camera detected (check the ribbon cable, then reboot)")
        try:
            cam = Picamera2()  # claims the camera: "Device or resource busy" if another process holds it
        except Exception as exc:  # noqa: BLE001 - libcamera raises many kinds; all mean "not usable now"
            raise CameraError(f"Pi camera not available ({_reason(exc)})") from None
        try:
            main = {"format": "RGB888"}
            if self.still_size:
                main["size"] = tuple(self.still_size)
            # One configuration with both streams avoids the ~0.5 s mode switch per capture.
            config = cam.create_still_configuration(main=main, lores={"size": tuple(self.preview_size),
                                                                      "format": "YUV420"},
                                                    display=None, buffer_count=2)
            cam.configure(config)
            cam.start()
        except Exception as exc:  # noqa: BLE001
            _close_bounded(cam, self.timeout)
            raise CameraError(f"Pi camera could not be started ({_reason(exc)})") from None
        self._cam = cam
        try:  # libcamera may have adjusted the lores size to what the hardware can do
            self._lores_size = tuple(cam.camera_configuration()["lores"]["size"])
        except Exception:  # noqa: BLE001
            self._lores_size = tuple(self.preview_size)
        try:
            model = cam.camera_properties.get("Model")
        except Exception:  # noqa: BLE001
            model = None
        self.name = f"picamera2:{model}" if model else "picamera2"

    def _stalled(self, what: str, exc: Exception) -> CameraError:
        if isinstance(exc, TimeoutError):
            try:
                self._cam.cancel_all_and_flush()  # drop the pending request so the next one starts clean
            except Exception:  # noqa: BLE001
                pass
            return CameraError(f"Pi camera {what} timed out: no frame within {self.timeout:g} s")
        return CameraError(f"Pi camera {what} failed ({_reason(exc)})")

    def capture(self) -> Frame:
        if self._cam is None:
            raise CameraError("Pi camera is not open")
        try:
            request = self._cam.capture_request(wait=self.timeout)
            try:
                arr = request.make_array("main")
                meta = request.get_metadata()
            finally:
                request.release()
        except Exception as exc:  # noqa: BLE001
            raise self._stalled("capture", exc) from None
        # picamera2's "RGB888" is stored B, G, R in memory.
        rgb = np.ascontiguousarray(arr[..., :3][..., ::-1])
        keep = {k: meta[k] for k in ("ExposureTime", "AnalogueGain", "ColourGains", "Lux", "FocusFoM") if k in meta}
        return Frame(rgb, _now(), self.name, keep)

    def preview(self) -> np.ndarray:
        if self._cam is None:
            raise CameraError("Pi camera is not open")
        try:
            yuv = self._cam.capture_array("lores", wait=self.timeout)
        except Exception as exc:  # noqa: BLE001
            raise self._stalled("preview", exc) from None
        w, h = self._lores_size
        try:
            return lores_to_rgb(yuv, w, h)
        except Exception as exc:  # noqa: BLE001 - a buffer of an unexpected layout
            raise CameraError(f"Pi camera preview has an unexpected layout {getattr(yuv, 'shape', '?')} "
                              f"for {w}x{h} ({_reason(exc)})") from None

    def close(self) -> None:
        if self._cam is not None:
            cam, self._cam = self._cam, None
            _close_bounded(cam, self.timeout)


@dataclass(frozen=True)
class Picamera2Options:
    """The Pi camera back-end's keys of ``[camera]``."""
    still_size: list[int] = setting(factory=list, ge=64, le=10000, empty="the sensor's full size")  # [] = full size
    preview_size: list[int] = setting(factory=lambda: [640, 480], ge=64, le=4096,
                                      label=N_("Preview size, width x height (e.g. 640x480)"))


def _detect() -> list[str]:
    models, why = picamera2_cameras()
    return [f"{m}    [camera] backend = \"picamera2\"" for m in models] or [f"none: {why}"]


BACKEND = Backend("picamera2", Picamera2Options,
                  lambda o: Picamera2Camera(o.still_size or None, tuple(o.preview_size)), rank=2, detect=_detect)
