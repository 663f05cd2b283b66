// Live regions: an element with data-live="/ui/..." is fetched again every data-every seconds
// with the page's query string, and its HTML replaced. A filter form with data-live-form
// rewrites the query string (so a reload or a shared link keeps the filter) and refreshes at
// once. Times with data-age are shown as "12 s ago", their title in the reader's time zone.
"use strict";
(() => {
  const pdm = (window.pdm = window.pdm || {});
  const status = document.getElementById("live-status");
  pdm.updates = 0;

  function signIn() {
    location.assign("/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
  }

  function ago(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s >= 86400) return Math.round(s / 86400) + " d ago";
    if (s >= 3600) return Math.round(s / 3600) + " h ago";
    if (s >= 60) return Math.round(s / 60) + " min ago";
    return Math.round(s) + " s ago";
  }

  function ages(root) {
    root.querySelectorAll("time[data-age]").forEach((el) => {
      const t = Date.parse(el.dateTime);
      if (Number.isNaN(t)) return;
      el.textContent = ago(t);
      el.title = new Date(t).toLocaleString();
    });
  }

  function showStatus(ok, detail) {
    if (!status) return;
    status.textContent = ok ? "live · " + new Date().toLocaleTimeString() : "offline · " + detail;
    status.className = "live " + (ok ? "ok" : "down");
  }

  // The operator is typing in this region (an acknowledgement note): do not replace it now.
  function busy(region) {
    const active = document.activeElement;
    if (active && region.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
      return true;
    }
    return [...region.querySelectorAll("input:not([type=hidden]), textarea")]
      .some((input) => input.value !== input.defaultValue);
  }

  async function refresh(region, force) {
    if (!force && (document.hidden || busy(region))) return;
    try {
      const resp = await fetch(region.dataset.live + location.search, {
        credentials: "same-origin", headers: { Accept: "text/html" } });
      if (resp.status === 401) return signIn();
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const html = await resp.text();
      if (!force && busy(region)) return;
      region.innerHTML = html;
      ages(region);
      pdm.updates += 1;
      showStatus(true);
      region.dispatchEvent(new CustomEvent("pdm:refreshed", { bubbles: true }));
    } catch (err) {
      showStatus(false, String(err.message || err) + ", retrying");
    }
  }

  function debounce(fn, ms) {
    let timer;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }

  const regions = [...document.querySelectorAll("[data-live]")];
  regions.forEach((region) => {
    const every = Math.max(1, Number(region.dataset.every || 5)) * 1000;
    setInterval(() => refresh(region, false), every);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) regions.forEach((region) => refresh(region, false));
  });

  document.querySelectorAll("form[data-live-form]").forEach((form) => {
    const apply = () => {
      if (!form.checkValidity()) return;
      const params = new URLSearchParams();
      for (const [key, value] of new FormData(form)) {
        const field = form.elements[key];
        if (value && !(field && field.dataset && field.dataset.default === value)) params.set(key, value);
      }
      const qs = params.toString();
      history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
      regions.forEach((region) => refresh(region, true));
    };
    form.addEventListener("change", apply);
    form.addEventListener("input", debounce(apply, 300));
    form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
  });

  async function getJSON(url) {
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (resp.status === 401) { signIn(); throw new Error("signed out"); }
    if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
    return resp.json();
  }

  ages(document);
  if (regions.length) showStatus(true);
  Object.assign(pdm, { refresh, ages, getJSON, signIn, showStatus,
    csrf: () => (document.querySelector("meta[name=pdm-csrf]") || {}).content || "" });
})();
