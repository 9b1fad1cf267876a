// Leukoscope page behaviour: capture without reloading, space bar capture,
// live view reconnect, review without reloading. Works without it too (plain forms).
(function () {
  "use strict";
  let captures = null; // the appliance's capture counter, from /api/status
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const catClass = (c) => "cat-" + String(c).replace(/[^a-z-]/g, "");

  function renderSummary(s) {
    const bar = document.getElementById("progress-bar");
    if (bar) bar.value = s.progress;
    const count = document.getElementById("count");
    if (count) count.textContent = s.seen;
    const table = document.getElementById("counts");
    if (table) {
      table.innerHTML = s.rows.map((r) =>
        `<tr><td><span class="dot ${catClass(r.category)}"></span>${esc(r.display)}</td><td>${r.count}</td></tr>`).join("");
    }
    const flags = document.getElementById("flags");
    if (flags) flags.innerHTML = s.flags.map((f) => `<li class="${esc(f.level)}">${esc(f.message)}</li>`).join("");
  }

  function renderField(r) {
    const box = document.getElementById("last-field");
    const msg = document.getElementById("qc-message");
    if (!box) return;
    const img = new Image();
    img.onload = () => {
      const rects = r.cells.map((c) => `<rect class="${catClass(c.category)}" x="${c.box[0]}" y="${c.box[1]}" width="${c.box[2] - c.box[0]}" height="${c.box[3] - c.box[1]}"></rect>`).join("");
      box.innerHTML = `<img src="${esc(r.image_url)}" alt="Last field"><svg viewBox="0 0 ${img.naturalWidth} ${img.naturalHeight}" preserveAspectRatio="none">${rects}</svg>`;
    };
    img.src = r.image_url;
    msg.textContent = r.qc_ok ? `Last field: ${r.cells.length} cell(s)` : `Not analysed: ${r.qc_message}`;
    msg.className = r.qc_ok ? "" : "qc-fail";
    const fields = document.getElementById("fields");
    if (fields) fields.textContent = String(Number(fields.textContent) + 1);
  }

  async function capture(ev) {
    if (ev) ev.preventDefault();
    const root = document.querySelector(".capture");
    const btn = document.getElementById("capture");
    const err = document.getElementById("capture-error");
    if (!root || btn.disabled) return;
    btn.disabled = true;
    err.hidden = true;
    btn.dataset.label = btn.dataset.label || btn.innerHTML;
    btn.textContent = "Capturing…";
    try {
      const resp = await fetch(root.dataset.captureUrl, { method: "POST", headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || "capture failed");
      renderField(body);
      renderSummary(body.summary);
      if (captures !== null) captures += 1;
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    } finally {
      btn.disabled = false;
      btn.innerHTML = btn.dataset.label;
    }
  }

  async function review(ev) {
    const form = ev.target.closest("form.review");
    if (!form) return;
    ev.preventDefault();
    const submitter = ev.submitter;
    const data = new FormData();
    const label = submitter && submitter.name === "label" ? submitter.value : form.querySelector("select").value;
    if (!label) { alert("Choose the cell type first."); return; }
    data.append("label", label);
    const resp = await fetch(form.action, { method: "POST", body: data, headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
    if (resp.ok) {
      const card = form.closest(".cell");
      const opt = form.querySelector(`option[value="${CSS.escape(label)}"]`);
      card.querySelector(".label").textContent = opt ? opt.textContent : label;
      card.classList.add("reviewed");
      card.dataset.reviewed = label;
    } else {
      const body = await resp.json().catch(() => ({}));
      alert(body.error || "Could not save the review.");
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("capture-form");
    if (form) form.addEventListener("submit", capture);
    document.addEventListener("keydown", (ev) => {
      const tag = (ev.target.tagName || "").toLowerCase();
      if (ev.code === "Space" && form && !["input", "textarea", "select", "button"].includes(tag)) capture(ev);
    });
    document.querySelectorAll("form.review").forEach((f) => f.addEventListener("submit", review));
    const preview = document.getElementById("preview");
    if (preview) {
      preview.addEventListener("error", () => setTimeout(() => { preview.src = preview.src.split("?")[0] + "?t=" + Date.now(); }, 2000));
      // the MJPEG stream ends after a few minutes by design; reconnect
      setInterval(() => { if (!preview.complete || preview.naturalWidth === 0) preview.src = preview.src.split("?")[0] + "?t=" + Date.now(); }, 10000);
    }
    const status = document.getElementById("camera-status");
    if (status) {
      setInterval(async () => {
        try {
          const r = await fetch("/api/status", { headers: { Accept: "application/json" } });
          if (!r.ok) return;
          const s = await r.json();
          status.textContent = "camera " + s.camera.status + (s.camera.error ? ": " + s.camera.error : "");
          status.className = "status " + s.camera.status;
          const name = document.getElementById("camera-name");
          if (name) name.textContent = s.camera.name;
          // a capture made elsewhere (the push-button) into the sample on screen: show it
          const root = document.querySelector(".capture");
          const btn = document.getElementById("capture");
          if (root && captures !== null && s.captures > captures && !btn.disabled &&
              String(s.active_sample) === root.dataset.sample) location.reload();
          captures = s.captures;
        } catch (e) { /* the page keeps working; the next poll retries */ }
      }, 2000);
    }
  });
})();
