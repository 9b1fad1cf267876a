"""``leukoscope serve``: the appliance process (web page, capture loop, systemd integration). It builds the page
over the runtime, so it sits above both: `device.box` never imports the page."""
from __future__ import annotations

import logging
import signal
import sys
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
SWITCH_INTERVAL_S = 0.001


class QueueDepthOnce(logging.Filter):
    """waitress logs "Task queue depth is N" for every request that waits for a thread: under load that was
    5,350 of 5,398 log lines. Pass the first of a backlog, drop the rest until requests have stopped queueing
    for ``quiet`` seconds (the next backlog is a new change of state and is logged again)."""

    def __init__(self, quiet: float = 10.0, clock=None):
        super().__init__()
        import time

        self.quiet, self.clock = quiet, clock or time.monotonic
        self.last: float | None = None
        self.deepest = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Task queue depth"):
            return True
        now, depth = self.clock(), int(record.args[0]) if record.args else 0
        new = self.last is None or now - self.last > self.quiet
        self.last = now
        if not new:
            self.deepest, self.suppressed = max(self.deepest, depth), self.suppressed + 1
            return False
        before = f" (the previous backlog reached depth {self.deepest}, {self.suppressed} lines not repeated)" \
            if self.suppressed else ""
        record.msg, record.args = ("requests are waiting for a free server thread (queue depth %d); logged once "
                                   "until they stop queueing" + before), (depth,)
        self.deepest, self.suppressed = depth, 0
        return True


def quiet_waitress_queue() -> QueueDepthOnce:
    qlog = logging.getLogger("waitress.queue")
    for f in qlog.filters:
        if isinstance(f, QueueDepthOnce):
            return f
    f = QueueDepthOnce()
    qlog.addFilter(f)
    return f


class PortBusy(OSError):
    """The address the page should listen on is taken; the message is the operator's one line."""


def bind_listener(host: str, port: int):
    """Bind the page's socket before anything else happens (no data folder, no database, no model yet),
    so a busy port ends in one line and nothing is created."""
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise PortBusy(errno.EADDRNOTAVAIL, f"cannot listen on host {host!r} ({exc.strerror}); "
                                            "choose another with --host") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does: a restart may reuse the port
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortBusy(exc.errno, f"port {port} on {host} is already in use (is Leukoscope already "
                                      f"running?); start with --port N to use another port") from None
        raise PortBusy(exc.errno, f"cannot listen on {host} port {port} ({exc.strerror}); "
                                  "choose another with --port N or --host") from None
    return sock


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


def serve(cfg: AppConfig, sock=None) -> int:
    """Serve until SIGTERM/SIGINT. ``cfg`` already includes the page's saved settings; ``sock``: the page's
    socket, already bound by ``bind_listener`` (bound here otherwise, still before the data folder is touched)."""
    import waitress

    from device.web import create_app

    sock = sock if sock is not None else bind_listener(cfg.server.host, cfg.server.port)
    try:
        runtime = build_runtime(cfg)
    except BaseException:
        sock.close()
        raise
    app = create_app(runtime)
    raise_fd_limit()
    quiet_waitress_queue()
    # The analysis is many short numpy/OpenCV calls, each taking the GIL back on return; with page threads
    # busy in Python it waited up to the 5 ms default for every one of them. 1 ms hands it back sooner.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    server = waitress.create_server(app, sockets=[sock], threads=cfg.server.threads,
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
