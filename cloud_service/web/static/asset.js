// The asset page's charts (uPlot): RUL and failure probability of the cloud and edge models
// over time on one chart with the cloud's alert transitions marked, and one small chart per
// chosen sensor. Both load from the API and then ask only for what is new every few seconds.
// The uPlot instances are on window.pdm.charts (their .data is what they draw).
"use strict";
(() => {
  const pdm = window.pdm;
  const POLL_MS = 5000;
  const MAX_POINTS = 20000; // per chart; older points are dropped from the view
  const SENSOR_TICKS = 500; // the latest ticks a sensor chart shows
  const STATE_COLOURS = { CRITICAL: "#b03a2e", WARNING: "#d68910", NORMAL: "#1e8449" };
  const charts = (pdm.charts = { history: null, sensors: {} });
  const historyEl = document.getElementById("history-chart");
  const base = `/api/v1/assets/${encodeURIComponent(historyEl.dataset.gateway)}/` +
    encodeURIComponent(historyEl.dataset.asset);
  const fmt = (digits) => (u, v) => (v == null ? "–" : v.toFixed(digits));

  function width(el) { return Math.max(320, el.clientWidth); }

  function trim(columns) {
    const extra = columns[0].length - MAX_POINTS;
    if (extra > 0) columns.forEach((col) => col.splice(0, extra));
  }

  // -- RUL and probability ------------------------------------------------------------------
  const past = { data: [[], [], [], [], []], lastSeq: -1, alerts: [], lastAlert: 0, zoomed: false };

  function drawAlerts(u) {
    const ctx = u.ctx;
    const [lo, hi] = [u.scales.x.min, u.scales.x.max];
    ctx.save();
    ctx.lineWidth = 2 * devicePixelRatio;
    ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
    for (const alert of past.alerts) {
      if (alert.tick_time < lo || alert.tick_time > hi) continue;
      const x = u.valToPos(alert.tick_time, "x", true);
      ctx.strokeStyle = STATE_COLOURS[alert.new_state] || "#555";
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  }

  function makeHistoryChart() {
    return new uPlot({
      width: width(historyEl), height: 320,
      scales: { x: { time: true }, p: { range: [0, 1] },
                rul: { range: (u, min, max) => [0, Math.max(10, max || 0)] } },
      series: [
        {},
        { label: "cloud probability", scale: "p", stroke: "#b03a2e", width: 2, value: fmt(2) },
        { label: "edge probability", scale: "p", stroke: "rgba(229, 152, 102, 0.45)", width: 6, value: fmt(2) },
        { label: "cloud RUL", scale: "rul", stroke: "#1f618d", width: 2, value: fmt(0) },
        { label: "edge RUL", scale: "rul", stroke: "rgba(127, 179, 213, 0.5)", width: 6, value: fmt(0) },
      ],
      axes: [{}, { scale: "p", label: "failure probability" },
             { scale: "rul", side: 1, label: "RUL (cycles)", grid: { show: false } }],
      hooks: { draw: [drawAlerts], setSelect: [(u) => { if (u.select.width > 0) past.zoomed = true; }] },
    }, past.data, historyEl);
  }

  async function loadHistory() {
    let added = 0;
    for (;;) {
      const page = await pdm.getJSON(`${base}/predictions?after_seq=${past.lastSeq}&limit=5000`);
      for (const p of page.items) {
        past.lastSeq = p.seq;
        if (p.tick_time == null) continue;
        const d = past.data;
        d[0].push(p.tick_time); d[1].push(p.probability); d[2].push(p.edge_probability);
        d[3].push(p.rul); d[4].push(p.edge_rul);
        added += 1;
      }
      if (page.next_after_seq == null || !page.items.length) break;
    }
    const gw = encodeURIComponent(historyEl.dataset.gateway);
    const asset = encodeURIComponent(historyEl.dataset.asset);
    for (;;) {
      const page = await pdm.getJSON(`/api/v1/alerts?gateway=${gw}&asset=${asset}` +
                                     `&after_id=${past.lastAlert}&limit=5000`);
      past.alerts.push(...page.items);
      if (page.items.length) past.lastAlert = page.items[page.items.length - 1].id;
      if (page.next_after_id == null) break;
    }
    trim(past.data);
    return added;
  }

  async function updateHistory() {
    const added = await loadHistory();
    const note = document.getElementById("history-note");
    note.textContent = past.data[0].length ? "" :
      "No prediction yet: the cloud scores an asset once it holds a full window of ticks.";
    if (!charts.history) charts.history = makeHistoryChart();
    else if (added) charts.history.setData(past.data, !past.zoomed);
  }

  historyEl.addEventListener("dblclick", () => { past.zoomed = false; });

  // -- sensors ------------------------------------------------------------------------------
  const sensorsEl = document.getElementById("sensor-charts");
  const picker = document.getElementById("sensor-picker");
  const sensors = { times: [], values: {}, lastSeq: -1 };

  function chosen() {
    return picker ? [...picker.querySelectorAll("input[name=sensor]:checked")].map((i) => i.value) : [];
  }

  function makeSensorChart(name) {
    const box = document.createElement("div");
    box.className = "sensor-chart";
    box.dataset.sensor = name;
    sensorsEl.appendChild(box);
    return new uPlot({
      width: width(sensorsEl), height: 140, legend: { show: true },
      cursor: { sync: { key: "sensors" } }, scales: { x: { time: true } },
      series: [{}, { label: name, stroke: "#34495e", width: 1.5, value: fmt(3) }],
      axes: [{}, { size: 70 }],
    }, [sensors.times, sensors.values[name] || []], box);
  }

  function drawSensors() {
    const want = chosen();
    for (const [name, chart] of Object.entries(charts.sensors)) {
      if (!want.includes(name)) { chart.root.parentNode.remove(); chart.destroy(); delete charts.sensors[name]; }
    }
    for (const name of want) {
      if (!charts.sensors[name]) charts.sensors[name] = makeSensorChart(name);
      else charts.sensors[name].setData([sensors.times, sensors.values[name] || []]);
    }
  }

  async function loadSensors() {
    if (sensors.lastSeq < 0) {
      const last = Number(sensorsEl.dataset.lastSeq);
      sensors.lastSeq = Number.isFinite(last) ? Math.max(-1, last - SENSOR_TICKS) : -1;
    }
    let added = 0;
    for (;;) {
      const page = await pdm.getJSON(`${base}/ticks?after_seq=${sensors.lastSeq}&limit=5000`);
      for (const tick of page.items) {
        sensors.lastSeq = tick.seq;
        sensors.times.push(tick.time);
        const n = sensors.times.length;
        for (const [name, value] of Object.entries(tick.values)) {
          const col = (sensors.values[name] = sensors.values[name] || []);
          while (col.length < n - 1) col.push(null);
          col.push(value);
        }
        added += 1;
      }
      if (page.next_after_seq == null || !page.items.length) break;
    }
    Object.values(sensors.values).forEach((col) => {
      while (col.length < sensors.times.length) col.push(null);  // a sensor a tick lacked
    });
    const extra = sensors.times.length - SENSOR_TICKS;
    if (extra > 0) {
      sensors.times.splice(0, extra);
      Object.values(sensors.values).forEach((col) => col.splice(0, extra));
    }
    return added;
  }

  async function updateSensors() {
    if (!sensorsEl) return;
    if (await loadSensors() || Object.keys(charts.sensors).length !== chosen().length) drawSensors();
  }

  if (picker) {
    picker.addEventListener("change", () => {
      const params = new URLSearchParams(location.search);
      params.set("sensors", chosen().join(","));
      history.replaceState(null, "", location.pathname + "?" + params.toString());
      drawSensors();
    });
  }

  // -- both ---------------------------------------------------------------------------------
  async function update() {
    try {
      await Promise.all([updateHistory(), updateSensors()]);
      pdm.chartUpdates = (pdm.chartUpdates || 0) + 1;
    } catch (err) {
      pdm.showStatus(false, String(err.message || err) + ", retrying");
    }
  }

  window.addEventListener("resize", () => {
    if (charts.history) charts.history.setSize({ width: width(historyEl), height: 320 });
    Object.values(charts.sensors).forEach((c) => c.setSize({ width: width(sensorsEl), height: 140 }));
  });
  update();
  setInterval(() => { if (!document.hidden) update(); }, POLL_MS);
})();
