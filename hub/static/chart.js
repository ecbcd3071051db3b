// edgefleet dashboard: the fleet state-over-time chart (SVG, drawn here; no library).
"use strict";
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { w: 640, h: 180, pad: 24, hours: 24 };

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

// samples: [{at, states: {state: n}}] oldest first; order: the hub's state names.
function drawChart(box, legend, samples, order) {
  box.replaceChildren();
  legend.replaceChildren();
  const end = Date.now() / 1000;
  const start = end - CHART.hours * 3600;
  const max = Math.max(1, ...samples.map((s) => Math.max(0, ...Object.values(s.states))));
  const x = (at) => CHART.pad + ((at - start) / (end - start)) * (CHART.w - 2 * CHART.pad);
  const y = (n) => CHART.h - CHART.pad - (n / max) * (CHART.h - 2 * CHART.pad);
  box.append(svg("line", { class: "axis", x1: CHART.pad, y1: y(0), x2: CHART.w - CHART.pad, y2: y(0) }));
  const top = svg("text", { class: "axis-label", x: 2, y: y(max) + 4 });
  top.textContent = String(max);
  const left = svg("text", { class: "axis-label", x: CHART.pad, y: CHART.h - 4 });
  left.textContent = `${CHART.hours} h ago`;
  const right = svg("text", { class: "axis-label", x: CHART.w - CHART.pad - 24, y: CHART.h - 4 });
  right.textContent = "now";
  box.append(top, left, right);
  const present = order.filter((st) => samples.some((s) => s.states[st]));
  for (const state of present) {
    const points = samples.map((s) => `${x(s.at).toFixed(1)},${y(s.states[state] || 0).toFixed(1)}`);
    if (samples.length > 1) {
      box.append(svg("polyline", { class: `line ${state}`, "data-state": state, points: points.join(" ") }));
    }
    for (const p of points) {
      const [cx, cy] = p.split(",");
      box.append(svg("circle", { class: `dot ${state}`, cx, cy, r: 2 }));
    }
    const last = samples[samples.length - 1].states[state] || 0;
    legend.append(el("li", { class: "chart-key", "data-state": state }, badge(state), ` ${last}`));
  }
  if (!present.length) legend.append(el("li", {}, "no samples yet (one every 5 minutes)"));
}
