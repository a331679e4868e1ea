// A small SVG line chart: shared time axis, y axis with a unit, legend with the latest
// values, a hover line with the values under the pointer, and scale events as markers.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const W = 480, H = 170, PAD = { l: 52, r: 10, t: 10, b: 22 };

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
  return 10 * p;
}

function fmt(value, unit, integer) {
  if (value === null || value === undefined) return "–";
  if (integer) return `${Math.round(value)} ${unit}`.trim();
  const digits = Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${unit}`.trim();
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

class LineChart {
  // spec: {id, title, unit, lines: [{key, label, color, dash}], max}
  constructor(parent, spec) {
    this.spec = spec;
    this.box = document.createElement("div");
    this.box.className = "chart";
    this.box.dataset.chart = spec.id;
    const unit = spec.unit ? ` <span>(${spec.unit})</span>` : "";
    this.box.innerHTML = `<div class="chart-title">${spec.title}${unit}</div>`;
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" }, this.box);
    this.tip = document.createElement("div");
    this.tip.className = "tip";
    this.legend = document.createElement("div");
    this.legend.className = "legend";
    this.box.append(this.tip, this.legend);
    parent.appendChild(this.box);
    this.svg.addEventListener("mousemove", (e) => this.hover(e));
    this.svg.addEventListener("mouseleave", () => this.unhover());
  }

  x(t) {
    const [a, b] = this.domain;
    return PAD.l + ((t - a) / (b - a || 1)) * (W - PAD.l - PAD.r);
  }

  y(v) {
    return H - PAD.b - (v / this.ymax) * (H - PAD.t - PAD.b);
  }

  render(data, domain, events) {
    this.data = data;
    this.domain = domain;
    const cols = this.spec.lines.map((line) => data.series[line.key] || []);
    const top = Math.max(0, ...cols.flat().filter((v) => v !== null));
    this.ymax = this.spec.max || (this.spec.integer ? Math.max(2, Math.ceil(top) + 1) : niceMax(top * 1.1));
    this.svg.replaceChildren();
    this.axes();
    for (const ev of events) this.marker(ev);
    this.spec.lines.forEach((line, i) => this.line(line, cols[i], data.t));
    this.hoverLine = el("line", { class: "hover", y1: PAD.t, y2: H - PAD.b, visibility: "hidden" }, this.svg);
    this.legend.innerHTML = this.spec.lines
      .map((line, i) => {
        const last = [...cols[i]].reverse().find((v) => v !== null);
        return `<span><i style="background:${line.color}"></i>${line.label} ` +
          `<b data-last="${line.key}">${fmt(last ?? null, this.spec.unit, this.spec.integer)}</b></span>`;
      })
      .join("");
  }

  axes() {
    // Counts get a tick per whole number (at most about 5); other values quarters.
    const every = this.spec.integer ? Math.max(1, Math.ceil(this.ymax / 5)) : this.ymax / 4;
    for (let v = 0; v <= this.ymax + 1e-9; v += every) {
      const yy = this.y(v);
      el("line", { class: "grid", x1: PAD.l, x2: W - PAD.r, y1: yy, y2: yy }, this.svg);
      el("text", { class: "tick", x: PAD.l - 4, y: yy + 3, "text-anchor": "end" }, this.svg)
        .textContent = this.spec.integer ? String(v) : fmt(v, "");
    }
    const [a, b] = this.domain;
    for (let i = 0; i <= 4; i++) {
      const t = a + ((b - a) * i) / 4;
      const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
      el("text", { class: "tick", x: this.x(t), y: H - 6, "text-anchor": anchor }, this.svg)
        .textContent = clock(t);
    }
  }

  line(spec, values, times) {
    let d = "", points = 0, pen = false;
    values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${this.x(times[i]).toFixed(1)},${this.y(v).toFixed(1)}`;
      pen = true;
      points++;
    });
    el("path", {
      d: d || "M0,0", stroke: spec.color, fill: "none", "stroke-width": 1.6,
      "stroke-dasharray": spec.dash || "", "data-points": points, "data-key": spec.key,
    }, this.svg);
  }

  marker(ev) {
    const xx = this.x(ev.t);
    if (xx < PAD.l || xx > W - PAD.r) return;
    const mark = el("line", { class: `event ${ev.direction}`, x1: xx, x2: xx, y1: PAD.t, y2: H - PAD.b }, this.svg);
    el("title", {}, mark).textContent = `scale ${ev.direction} ${ev.from} → ${ev.to} at ${clock(ev.t)}`;
  }

  hover(e) {
    if (!this.data || !this.data.t.length) return;
    const rect = this.svg.getBoundingClientRect();
    const px = ((e.clientX - rect.left) / rect.width) * W;
    const [a, b] = this.domain;
    const t = a + ((px - PAD.l) / (W - PAD.l - PAD.r)) * (b - a);
    let i = 0;
    this.data.t.forEach((tt, j) => { if (Math.abs(tt - t) < Math.abs(this.data.t[i] - t)) i = j; });
    const xx = this.x(this.data.t[i]);
    this.hoverLine.setAttribute("x1", xx);
    this.hoverLine.setAttribute("x2", xx);
    this.hoverLine.setAttribute("visibility", "visible");
    const rows = this.spec.lines.map((l) => `${l.label}: ${fmt((this.data.series[l.key] || [])[i] ?? null, this.spec.unit, this.spec.integer)}`);
    this.tip.textContent = `${clock(this.data.t[i])}  ${rows.join("  ·  ")}`;
    this.tip.style.visibility = "visible";
  }

  unhover() {
    if (this.hoverLine) this.hoverLine.setAttribute("visibility", "hidden");
    this.tip.style.visibility = "hidden";
  }
}

window.LineChart = LineChart;
window.fmtValue = fmt;
window.fmtClock = clock;
