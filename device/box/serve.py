"""``leukoscope serve``: the appliance process (web page, capture loop, systemd integration)."""
from __future__ import annotations

import logging
import signal
import threading

from device.box import sdnotify
from device.config import AppConfig
from device.box.runtime import build_runtime

log = logging.getLogger("leukoscope")

# Connections: waitress's default of 100 let 150 idle sockets starve /health and the kiosk. Idle
# channels cost one descriptor and no thread, so allow many, and drop the silent ones quickly.
CONNECTION_LIMIT = 1000
CHANNEL_TIMEOUT = 30  # seconds a connection may stay silent (the MJPEG stream is written to, so it stays)
CLEANUP_INTERVAL = 5


def raise_fd_limit(want: int = CONNECTION_LIMIT + 200) -> None:
    """systemd's default soft limit (1024) is below CONNECTION_LIMIT plus files and sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def process_age() -> float:
    """Seconds since this process started (from /proc), so "ready in" includes imports."""
    import os

    try:
        ticks = int(open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return float("nan")


def serve(cfg: AppConfig) -> int:
    """Serve until SIGTERM/SIGINT. ``cfg`` already includes the page's saved settings."""
    import waitress

    from device.web import create_app

    runtime = build_runtime(cfg)
    app = create_app(runtime)
    raise_fd_limit()
    server = waitress.create_server(app, host=cfg.server.host, port=cfg.server.port, threads=cfg.server.threads,
                                    ident="leukoscope", clear_untrusted_proxy_headers=True,
                                    connection_limit=CONNECTION_LIMIT, channel_timeout=CHANNEL_TIMEOUT,
                                    cleanup_interval=CLEANUP_INTERVAL, asyncore_use_poll=True)
    stopping = threading.Event()

    def on_signal(signum, _frame):
        if stopping.is_set():
            return  # a second signal must not interrupt the clean-up below
        log.info("signal %d: shutting down", signum)
        stopping.set()
        # waitress's run() ends on SystemExit and stops its request threads; closing only the
        # listener is not enough: idle keep-alive connections would keep its loop alive.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watchdog(interval: float):
        # alive() is true while the loop idles or runs one job within its time limit (a long
        # analysis is not a hang), false when the thread is gone or stuck past that limit
        while not stopping.wait(interval):
            ok, body = runtime.health()
            if ok:
                sdnotify.notify("WATCHDOG=1")
            else:
                log.error("withholding the watchdog ping: %s", "; ".join(body["problems"]))

    interval = sdnotify.watchdog_interval()
    if interval:
        threading.Thread(target=watchdog, args=(interval,), daemon=True, name="watchdog").start()
    ready_s = process_age()
    host, port = server.effective_host, server.effective_port
    print(f"Leukoscope ready on http://{host}:{port}/ in {ready_s:.2f} s "
          f"(model {runtime.bundle.name}, camera {runtime.camera.camera.name}, data {cfg.data_dir})", flush=True)
    sdnotify.notify(f"READY=1\nSTATUS=serving on {host}:{port}")
    try:
        server.run()
    finally:
        sdnotify.notify("STOPPING=1")
        server.close()
        runtime.stop()  # the capture in progress finishes: never a half-written record
        log.info("stopped cleanly")
    return 0
