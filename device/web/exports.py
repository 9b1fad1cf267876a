"""Downloads: a sample's PDF report, its cells as CSV or JSON, and a backup of the whole box (administrators)."""
from __future__ import annotations

import io
import re
import tarfile
import tempfile
import time
from pathlib import Path

from flask import Blueprint, abort, g, send_file

from device.model import installed as models
from device.records import samples
from device.records.backup import BackupError, backup
from device.web.auth import admin_required
from device.web.common import error_page, rt, sample_models, sample_or_404
from device.web.report import cells_csv, cells_json, sample_pdf

bp = Blueprint("exports", __name__)


def _download_name(s, ext: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", s["sample_code"]).strip("._")[:60] or f"sample-{s['id']}"
    return f"leukoscope-{safe}.{ext}"


@bp.route("/samples/<int:sample_id>/report.pdf")
def report_pdf(sample_id: int):
    r = rt()
    s = sample_or_404(sample_id)
    used = samples.models_of(r.store, s["id"])
    pdf = sample_pdf(r.store, s, r.config, models.bundle_of_sample(r.config.data_dir, used, r.bundle),
                     models_info=sample_models(r, s, used))
    r.store.audit(g.user["username"], "export-pdf", f"sample:{sample_id}")
    return send_file(io.BytesIO(pdf), mimetype="application/pdf", as_attachment=True,
                     download_name=_download_name(s, "pdf"))


@bp.route("/samples/<int:sample_id>/cells.<fmt>")
def export_cells(sample_id: int, fmt: str):
    if fmt not in ("csv", "json"):
        abort(404)
    r = rt()
    s = sample_or_404(sample_id)
    body = cells_csv(r.store, s) if fmt == "csv" else cells_json(r.store, s, r.config)
    r.store.audit(g.user["username"], f"export-{fmt}", f"sample:{sample_id}")
    mime = "text/csv" if fmt == "csv" else "application/json"
    return send_file(io.BytesIO(body.encode()), mimetype=mime, as_attachment=True, download_name=_download_name(s, fmt))


@bp.route("/backup.tar.gz", methods=["POST"])
@admin_required
def backup_download():
    """An online snapshot of the records and images (the same as ``leukoscope backup``), as one download."""
    r = rt()
    with tempfile.TemporaryDirectory(prefix="leukoscope-backup-") as tmp:
        dest = Path(tmp) / "snapshot"
        try:
            manifest = backup(Path(r.config.data_dir), dest)
        except BackupError as exc:
            return error_page(409, str(exc))
        out = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for path in sorted(dest.rglob("*")):
                if path.is_file() and path.name != "secret_key":  # the session key never leaves the box
                    tar.add(path, arcname=str(Path("leukoscope-backup") / path.relative_to(dest)))
        out.seek(0)
    r.store.audit(g.user["username"], "backup-downloaded", detail={"counts": manifest["counts"],
                                                                   "files": manifest["files"]})
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    return send_file(out, mimetype="application/gzip", as_attachment=True,
                     download_name=f"leukoscope-backup-{stamp}.tar.gz")
