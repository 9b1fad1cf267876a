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
      box.innerHTML = `<img src="${esc(r.image_url)}" alt="Last field"><svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="xMidYMid meet">${rects}</svg>`;
    };
    img.src = r.image_url;
    qc.innerHTML = r.qc_html; // rendered by the server (escaped there)
    const scale = document.getElementById("field-scale");
    if (scale) scale.textContent = r.scale_text || "";
    const panel = document.getElementById("count-panel");
    if (panel) panel.innerHTML = r.count_html;
  }

  // One press, one field: a held key (auto-repeat), a double or triple click, or a press just after a capture
  // would photograph the same unmoved view again. Presses while a capture runs and for a moment after are ignored.
  const SETTLE_MS = 700;
  let capturing = false, settledAt = 0;

  async function capture(ev) {
    if (ev) ev.preventDefault();
    if (ev && ev.repeat) return;
    const root = document.querySelector(".capture");
    const btn = document.getElementById("capture");
    const err = document.getElementById("capture-error");
    if (!root || btn.disabled || capturing || Date.now() < settledAt) return;
    capturing = true;
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
      settledAt = Date.now() + SETTLE_MS;
      btn.innerHTML = btn.dataset.label;
      setTimeout(() => { btn.disabled = false; capturing = false; }, SETTLE_MS);
    }
  }

  async function review(ev, forced) {
    const form = ev.target.closest("form.review");
    if (!form) return;
    ev.preventDefault();
    const submitter = ev.submitter;
    const data = new FormData();
    const confirm = !forced && submitter && submitter.name === "confirm";
    const label = forced || (confirm ? "" : (submitter && submitter.name === "label" ? submitter.value : form.querySelector("select").value));
    if (!confirm && !label) { alert(msg("msgChoose")); return; }
    data.append("label", label);
    if (confirm) data.append("confirm", "1");
    const resp = await fetch(form.action, { method: "POST", body: data, headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) { alert(body.error || msg("msgReviewFailed")); return; }
    const card = form.closest(".cell");
    const wasOpen = !card.classList.contains("reviewed"); // the counters below drop once per cell
    card.querySelector(".label").textContent = body.display;
    card.classList.add("reviewed");
    card.classList.remove("cat-normal", "cat-malignant", "cat-atypical", "cat-uncertain", "cat-non-leukocyte");
    card.classList.add(catClass(body.category));
    card.dataset.reviewed = body.label;
    const sel = form.querySelector("select");
    if (sel) sel.value = "";
    const confirmBtn = form.querySelector("button.confirm");
    if (confirmBtn) confirmBtn.remove();
    const live = document.getElementById("live-counts");
    if (live && body.live_html) live.innerHTML = body.live_html; // rendered by the server (escaped there)
    const decrement = (el) => {
      const n = Number((el.textContent.match(/\d+/) || ["0"])[0]);
      if (n > 0) el.textContent = el.textContent.replace(String(n), String(n - 1));
      return n - 1;
    };
    const left = document.getElementById("left");
    if (wasOpen && left) decrement(left);
    const group = card.closest("section.group");
    const gleft = group && group.querySelector(".group-left");
    if (wasOpen && gleft) decrement(gleft);
    // the group's "accept all N" no longer includes this cell
    const accept = group && group.querySelector("form.accept button");
    if (wasOpen && accept && decrement(accept) <= 0) accept.closest("form").remove();
    if (wasOpen) focusNext(card);
  }

  // keyboard review: arrows move, Enter confirms, 1-9 the model's classes, 0 not a white cell
  const cards = () => Array.from(document.querySelectorAll("article.cell"));
  function focusNext(card) {
    const all = cards();
    const i = all.indexOf(card);
    const next = all.slice(i + 1).find((c) => !c.classList.contains("reviewed")) || all[i + 1];
    if (next) next.focus();
  }
  function reviewKey(ev) {
    const card = document.activeElement && document.activeElement.closest && document.activeElement.closest("article.cell");
    const tag = (ev.target.tagName || "").toLowerCase();
    if (["input", "textarea", "select"].includes(tag) || ev.repeat || ev.ctrlKey || ev.altKey || ev.metaKey) return;
    const all = cards();
    if (!all.length) return;
    if (["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"].includes(ev.key)) {
      ev.preventDefault();
      const i = card ? all.indexOf(card) : -1;
      const rtl = document.documentElement.dir === "rtl";
      const fwd = ev.key === "ArrowDown" || ev.key === (rtl ? "ArrowLeft" : "ArrowRight");
      const j = Math.max(0, Math.min(all.length - 1, i + (fwd ? 1 : -1)));
      all[j].focus();
      return;
    }
    if (!card) return;
    const form = card.querySelector("form.review");
    if (!form) return;
    const keyed = ((document.getElementById("keys") || { dataset: {} }).dataset.keyed || "").split(" ").filter(Boolean);
    let label = null;
    if (ev.key === "0") label = "not-a-cell";
    else if (/^[1-9]$/.test(ev.key) && keyed[Number(ev.key) - 1]) label = keyed[Number(ev.key) - 1];
    if (label) { ev.preventDefault(); review({ target: form, preventDefault() {} }, label); return; }
    if (ev.key === "Enter" && ev.target === card) {
      const c = form.querySelector("button.confirm");
      if (c) { ev.preventDefault(); c.click(); }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("capture-form");
    if (form) form.addEventListener("submit", capture);
    document.addEventListener("keydown", (ev) => {
      const tag = (ev.target.tagName || "").toLowerCase();
      if (ev.code === "Space" && form && !["input", "textarea", "select", "button"].includes(tag)) capture(ev);
    });
    document.querySelectorAll("form.review").forEach((f) => {
      f.addEventListener("submit", review);
      // choosing another class is one tap too: the choice is the decision
      const sel = f.querySelector("select");
      if (sel) sel.addEventListener("change", () => { if (sel.value) review({ target: f, preventDefault() {} }, sel.value); });
    });
    if (document.querySelector("form.review")) document.addEventListener("keydown", reviewKey);
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
