// The Switchboard admin page. Plain JS, no build step: it keeps the admin key or JWT in
// sessionStorage (this tab only), polls the node's /admin/api/* endpoints every second with
// it, and draws everything with textContent and SVG elements (never innerHTML: channel
// names and log lines come from outside).
"use strict";

const TOKEN_KEY = "switchboard-admin-token";
const POLL_MS = 1000;
// Points kept for the charts: two minutes at one poll per second.
const HISTORY = 120;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const history = { node: [], cluster: [], out: [], in: [] };
let previous = null; // the last overview's {time, in, out}, for rates
let timer = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${token()}` },
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    throw new Unauthorized(body?.error?.message ?? "unauthorized");
  }
  if (!response.ok) {
    throw new Error(body?.error?.message ?? `HTTP ${response.status}`);
  }
  return body;
}

function showLogin(message) {
  clearTimeout(timer);
  timer = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("dashboard").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message ?? "";
  $("login-token").value = "";
  $("login-token").focus();
}

function showDashboard() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("session").hidden = false;
}

// ---- formatting ----

const number = new Intl.NumberFormat("en");
function fmt(n) {
  return n === null || n === undefined ? "–" : number.format(n);
}
function rate(n) {
  if (n === null) return "–";
  return n >= 100 ? number.format(Math.round(n)) : n.toFixed(1);
}
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
function duration(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}
function age(ms) {
  return ms < 1000 ? "just now" : `${duration(Math.round(ms / 1000))} ago`;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// ---- charts: a hand-drawn SVG line chart, one or two series ----

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

function chart(container, seriesList) {
  // Drawn at the container's own width, so text and dots are not stretched.
  const width = Math.max(300, container.clientWidth || 600);
  const height = 140;
  const pad = { top: 10, right: 8, bottom: 4, left: 44 };
  const values = seriesList.flat().filter((v) => v !== null);
  const max = Math.max(1, ...values);
  const x = (i) => pad.left + (i / (HISTORY - 1)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - v / max) * (height - pad.top - pad.bottom);

  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  for (const fraction of [0, 0.5, 1]) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", pad.left);
    line.setAttribute("x2", width - pad.right);
    line.setAttribute("y1", y(max * fraction));
    line.setAttribute("y2", y(max * fraction));
    line.setAttribute("class", "grid-line");
    svg.appendChild(line);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", pad.left - 6);
    label.setAttribute("y", y(max * fraction) + 4);
    label.setAttribute("class", "axis");
    label.textContent = rate(max * fraction).replace(/\.0$/, "");
    svg.appendChild(label);
  }
  seriesList.forEach((series, index) => {
    // Right-aligned: the newest point is at the right edge.
    const offset = HISTORY - series.length;
    const points = series
      .map((v, i) => (v === null ? null : `${x(offset + i).toFixed(1)},${y(v).toFixed(1)}`))
      .filter((p) => p !== null);
    if (points.length === 0) return;
    if (index === 0 && points.length > 1) {
      const area = document.createElementNS(SVG, "polygon");
      const first = points[0].split(",")[0];
      const last = points[points.length - 1].split(",")[0];
      area.setAttribute(
        "points",
        `${first},${height - pad.bottom} ${points.join(" ")} ${last},${height - pad.bottom}`,
      );
      area.setAttribute("class", "area");
      svg.appendChild(area);
    }
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", `series s${index + 1}`);
    svg.appendChild(line);
    // The latest value, marked so that a short history is still visible.
    const [lastX, lastY] = points[points.length - 1].split(",");
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", lastX);
    dot.setAttribute("cy", lastY);
    dot.setAttribute("r", 3);
    dot.setAttribute("class", `dot-end s${index + 1}`);
    svg.appendChild(dot);
  });
  container.replaceChildren(svg);
}

// ---- rendering ----

function renderOverview(data) {
  const node = data.node;
  const cluster = data.cluster;
  $("node-id").textContent = node.id;
  $("bus").textContent = `bus: ${node.bus} · ${node.bus_up ? "up" : "down"}${node.draining ? " · draining" : ""}`;
  $("bus").className = `pill ${node.bus_up && !node.draining ? "ok" : "bad"}`;
  $("updated").textContent = `updated ${new Date(data.time_ms).toLocaleTimeString()}`;

  $("node-connections").textContent = fmt(node.connections);
  const by = node.connections_by
    .filter((s) => s.value > 0)
    .map((s) => `${Object.values(s.labels).join("/")} ${fmt(s.value)}`);
  $("node-connections-by").textContent = by.length ? by.join(" · ") : "no open session";

  const clusterConnections = cluster.error ? null : cluster.connections;
  $("cluster-connections").textContent = fmt(clusterConnections);
  if (!cluster.error) {
    const live = cluster.nodes.filter((n) => n.live).length;
    $("cluster-nodes-count").textContent = `${live} live node${live === 1 ? "" : "s"}`;
  }

  // Rates from the counters' growth since the previous poll.
  let rateIn = null;
  let rateOut = null;
  if (previous && data.time_ms > previous.time) {
    const seconds = (data.time_ms - previous.time) / 1000;
    rateIn = Math.max(0, (node.messages_in_total - previous.in) / seconds);
    rateOut = Math.max(0, (node.messages_out_total - previous.out) / seconds);
  }
  previous = { time: data.time_ms, in: node.messages_in_total, out: node.messages_out_total };
  $("rate-in").textContent = rate(rateIn);
  $("rate-out").textContent = rate(rateOut);
  $("message-totals").textContent =
    `${fmt(node.messages_in_total)} in · ${fmt(node.messages_out_total)} out in total`;

  $("channels-count").textContent = fmt(node.channels);
  $("subscriptions").textContent = fmt(node.subscriptions);
  $("users").textContent = fmt(node.users);
  $("rss").textContent = bytes(node.memory_rss_bytes);
  $("uptime").textContent = `up ${duration(node.uptime_seconds)}`;

  push(history.node, node.connections);
  push(history.cluster, clusterConnections);
  chart($("chart-connections"), [history.node, history.cluster]);
  if (rateOut !== null) {
    push(history.out, rateOut);
    push(history.in, rateIn);
  }
  chart($("chart-messages"), [history.out, history.in]);

  const rows = $("nodes");
  if (cluster.error) {
    $("cluster-error").textContent = `Cluster state unavailable: ${cluster.error}`;
    return;
  }
  $("cluster-error").textContent = "";
  rows.replaceChildren(
    ...cluster.nodes.map((n) => {
      const row = el("tr");
      const name = el("td", n.id, "mono");
      if (n.this) name.appendChild(el("span", "this node", "tag"));
      row.appendChild(name);
      const state = el("td");
      state.appendChild(el("span", n.live ? "live" : "stale", `dot ${n.live ? "ok" : "bad"}`));
      row.appendChild(state);
      const beat = el("td", age(n.age_ms));
      beat.title = new Date(n.last_heartbeat_ms).toISOString();
      row.appendChild(beat);
      row.appendChild(el("td", fmt(n.connections), "num"));
      return row;
    }),
  );
}

function renderChannels(data) {
  $("channels-total").textContent = data.total ? `(${fmt(data.total)} in all)` : "";
  $("channels-empty").hidden = data.channels.length > 0;
  const max = Math.max(1, ...data.channels.map((c) => c.subscriptions));
  $("channels").replaceChildren(
    ...data.channels.map((c) => {
      const row = el("tr");
      const name = el("td", undefined, "mono");
      if (c.presence) {
        const link = el("button", c.name, "link");
        link.type = "button";
        link.title = "Show presence members";
        link.addEventListener("click", () => {
          $("presence-channel").value = c.name;
          loadPresence();
        });
        name.appendChild(link);
      } else {
        name.textContent = c.name;
      }
      row.appendChild(name);
      const count = el("td", undefined, "num");
      const bar = el("span", undefined, "bar-fill");
      bar.style.width = `${Math.round((c.subscriptions / max) * 100)}%`;
      count.appendChild(bar);
      count.appendChild(el("span", fmt(c.subscriptions)));
      row.appendChild(count);
      return row;
    }),
  );
}

function renderLogs(data) {
  $("logs-empty").hidden = data.entries.length > 0;
  $("logs").replaceChildren(
    ...data.entries.map((entry) => {
      const item = el("li", undefined, `log ${entry.level.toLowerCase()}`);
      item.appendChild(el("span", new Date(entry.time_ms).toLocaleTimeString(), "time"));
      item.appendChild(el("span", entry.level, "level"));
      item.appendChild(el("span", entry.target, "target"));
      item.appendChild(el("span", entry.message, "message"));
      return item;
    }),
  );
}

async function loadPresence() {
  const channel = $("presence-channel").value.trim();
  $("presence-error").textContent = "";
  if (!channel) return;
  try {
    const data = await api(`/admin/api/channels/${encodeURIComponent(channel)}/presence`);
    const list = $("presence-members");
    if (data.members.length === 0) {
      list.replaceChildren(el("li", "No member.", "muted"));
      return;
    }
    list.replaceChildren(
      ...data.members.map((m) => {
        const item = el("li");
        item.appendChild(el("span", String(m.user_id), "mono"));
        if (m.user_info && Object.keys(m.user_info).length) {
          item.appendChild(el("span", JSON.stringify(m.user_info), "muted small info"));
        }
        return item;
      }),
    );
  } catch (err) {
    if (err instanceof Unauthorized) return showLogin(err.message);
    $("presence-error").textContent = err.message;
  }
}

// ---- polling ----

async function poll() {
  timer = null;
  try {
    const [overview, channels, logs] = await Promise.all([
      api("/admin/api/overview"),
      api("/admin/api/channels?limit=15"),
      api("/admin/api/logs"),
    ]);
    showDashboard();
    $("poll-error").hidden = true;
    renderOverview(overview);
    renderChannels(channels);
    renderLogs(logs);
  } catch (err) {
    if (err instanceof Unauthorized) {
      showLogin(err.message);
      return;
    }
    $("poll-error").textContent = `Cannot reach the node: ${err.message}. Retrying…`;
    $("poll-error").hidden = false;
  }
  if (token()) timer = setTimeout(poll, POLL_MS);
}

function start() {
  previous = null;
  for (const series of Object.values(history)) series.length = 0;
  clearTimeout(timer);
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("login-token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("login-error").textContent = "";
    start();
  });
  $("logout").addEventListener("click", () => showLogin(""));
  $("presence-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadPresence();
  });
  if (token()) {
    start();
  } else {
    showLogin("");
  }
});
