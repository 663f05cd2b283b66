// Acknowledge an alert: POST /api/v1/alerts/{id}/acknowledge with the session cookie and the
// page's CSRF value; the operator's name is remembered in this browser for the next one.
"use strict";
(() => {
  const NAME_KEY = "pdm.operator";
  const region = document.getElementById("alerts");

  function fillNames(root) {
    const name = localStorage.getItem(NAME_KEY) || "";
    root.querySelectorAll("form[data-ack] input[name=by]").forEach((input) => {
      input.defaultValue = name;  // what the form resets to; typing over it is "busy"
    });
  }

  region.addEventListener("submit", async (event) => {
    const form = event.target.closest("form[data-ack]");
    if (!form) return;
    event.preventDefault();
    const error = form.querySelector(".error");
    const by = form.elements.by.value.trim();
    const note = form.elements.note.value.trim();
    error.textContent = "";
    form.querySelector("button").disabled = true;
    try {
      const resp = await fetch(`/api/v1/alerts/${encodeURIComponent(form.dataset.ack)}/acknowledge`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": window.pdm.csrf() },
        body: JSON.stringify({ by, note }) });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        const detail = typeof body.detail === "string" ? body.detail
          : (body.detail || []).map((d) => d.msg).join("; ");
        throw new Error(detail || "HTTP " + resp.status);
      }
      localStorage.setItem(NAME_KEY, by);
      form.reset();
      await window.pdm.refresh(region, true);
      fillNames(region);
    } catch (err) {
      error.textContent = err.message;
      form.querySelector("button").disabled = false;
    }
  });
  region.addEventListener("pdm:refreshed", () => fillNames(region));
  fillNames(region);
})();
