// Leukoscope page behaviour: capture without reloading, space bar capture,
// live view reconnect, review without reloading. Works without it too (plain forms).
(function () {
  "use strict";
  let captures = null; // the appliance's capture counter, from /api/status
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const catClass = (c) => "cat-" + String(c).replace(/[^a-z-]/g, "");
  // page wording comes from the server, in the page's language (data-msg-* on <body>)
  const msg = (key) => document.body.dataset[key] || key;

  function renderField(r) {
    const box = document.getElementById("last-field");
    const qc = document.getElementById("qc-message");
    if (!box) return;
    const img = new Image();
    img.onload = () => {
      const rects = r.cells.map((c) => `<rect class="${catClass(c.category)}" x="${c.box[0]}" y="${c.box[1]}" width="${c.box[2] - c.box[0]}" height="${c.box[3] - c.box[1]}"></rect>`).join("");
      // boxes are in the camera frame's pixels; the stored image may be a smaller copy of it
      const w = r.width || img.naturalWidth, h = r.height || img.naturalHeight;
      box.innerHTML = `<img src="${esc(r.image_url)}" alt="Last field"><svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">${rects}</svg>`;
    };
    img.src = r.image_url;
    qc.innerHTML = r.qc_html; // rendered by the server (escaped there)
    const scale = document.getElementById("field-scale");
    if (scale) scale.textContent = r.scale_text || "";
    const panel = document.getElementById("count-panel");
    if (panel) panel.innerHTML = r.count_html;
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
    btn.textContent = msg("msgCapturing");
    try {
      const resp = await fetch(root.dataset.captureUrl, { method: "POST", headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || msg("msgCaptureFailed"));
      renderField(body);
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
    const confirm = submitter && submitter.name === "confirm";
    const label = confirm ? "" : form.querySelector("select").value;
    if (!confirm && !label) { alert(msg("msgChoose")); return; }
    data.append("label", label);
    if (confirm) data.append("confirm", "1");
    const resp = await fetch(form.action, { method: "POST", body: data, headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
    if (resp.ok) {
      const card = form.closest(".cell");
      const wasOpen = !card.classList.contains("reviewed"); // the counters below drop once per cell
      const opt = label ? form.querySelector(`option[value="${CSS.escape(label)}"]`) : null;
      if (opt) card.querySelector(".label").textContent = opt.textContent;
      card.classList.add("reviewed");
      card.dataset.reviewed = label || "confirmed";
      const confirmBtn = form.querySelector("button.confirm");
      if (confirmBtn) confirmBtn.remove();
      const decrement = (el) => {
        const n = Number((el.textContent.match(/\d+/) || ["0"])[0]);
        if (n > 0) el.textContent = el.textContent.replace(String(n), String(n - 1));
        return n - 1;
      };
      const left = document.getElementById("left");
      if (wasOpen && left) decrement(left);
      // the group's "accept all N" no longer includes this cell
      const group = card.closest("section.group");
      const accept = group && group.querySelector("form.accept button");
      if (wasOpen && accept && decrement(accept) <= 0) accept.closest("form").remove();
    } else {
      const body = await resp.json().catch(() => ({}));
      alert(body.error || msg("msgReviewFailed"));
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
          status.textContent = msg("msgCamera") + " " + (s.camera_text || s.camera.status) + (s.camera.error ? ": " + s.camera.error : "");
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
