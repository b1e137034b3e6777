// globeflow serve: the page. Parses input, calls POST /v1/locate, draws the answer. No network
// access beyond this server: Leaflet is vendored and the basemap comes from /v1/basemap.geojson
// (countries) and, once the map is zoomed in to ADMIN1_ZOOM, /v1/admin1.geojson (states/provinces).
"use strict";

const $ = (id) => document.getElementById(id);
const pct = (p) => (p >= 0.995 ? "99%+" : p < 0.005 ? "<1%" : Math.round(100 * p) + "%");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

const map = L.map("map", { minZoom: 2, maxZoom: 13, zoomSnap: 0.5, worldCopyJump: false, attributionControl: true });
map.attributionControl.setPrefix(false);
map.attributionControl.addAttribution("Borders, states/provinces: Natural Earth · Places: GeoNames");
L.control.scale({ position: "bottomright" }).addTo(map);
map.setView([25, 5], 2);
map.createPane("basemap").style.zIndex = 250;
map.createPane("admin1").style.zIndex = 260;
map.createPane("density").style.zIndex = 410;
map.createPane("labels").style.zIndex = 430;
map.createPane("regions").style.zIndex = 420;
map.createPane("modes").style.zIndex = 640;
let layers = [];

fetch("/v1/basemap.geojson")
  .then((r) => r.json())
  .then((fc) => {
    L.geoJSON(fc, {
      pane: "basemap",
      filter: (f) => f.properties.kind !== "label",
      style: (f) => f.properties.kind === "graticule"
        ? { color: "#8fa9bd", weight: 0.7, opacity: 0.6, dashArray: "3 5", interactive: false }
        : { color: "#8a8f94", weight: 0.8, fillColor: "#f4f1ea", fillOpacity: 1 },
      onEachFeature: (f, layer) => {
        if (f.properties.name) layer.bindTooltip(f.properties.name, { sticky: true, direction: "top", opacity: 0.85 });
      },
    }).addTo(map);
    for (const f of fc.features.filter((f) => f.properties.kind === "label")) {
      const [lon, lat] = f.geometry.coordinates;
      L.marker([lat, lon], {
        pane: "labels", interactive: false, keyboard: false,
        icon: L.divIcon({ className: "country-label", html: esc(f.properties.name), iconSize: null }),
      }).addTo(map);
    }
  });

function labelsByZoom() {
  const z = map.getZoom();
  map.getContainer().classList.toggle("labels-off", z < 3);
}
map.on("zoomend", labelsByZoom);
labelsByZoom();

// State/province lines: ~0.5 MB, so fetched only the first time the map is zoomed in this far,
// and shown only while it is (at world scale they would hide the countries).
const ADMIN1_ZOOM = 4;
let admin1Layer = null;
let admin1Loading = false;
function admin1ByZoom() {
  const on = map.getZoom() >= ADMIN1_ZOOM;
  if (admin1Layer) {
    if (on && !map.hasLayer(admin1Layer)) admin1Layer.addTo(map);
    if (!on && map.hasLayer(admin1Layer)) map.removeLayer(admin1Layer);
    return;
  }
  if (!on || admin1Loading) return;
  admin1Loading = true;
  fetch("/v1/admin1.geojson")
    .then((r) => r.json())
    .then((fc) => {
      admin1Layer = L.geoJSON(fc, {
        pane: "admin1",
        interactive: false,
        style: { className: "admin1", color: "#7d848c", weight: 0.7, opacity: 0.9, dashArray: "4 3", interactive: false },
      });
      admin1ByZoom();
    })
    .finally(() => { admin1Loading = false; });
}
map.on("zoomend", admin1ByZoom);
admin1ByZoom();

function setStatus(text, busy) {
  $("status").textContent = text || "";
  $("go").disabled = !!busy;
  document.body.dataset.state = busy ? "busy" : document.body.dataset.state;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  document.body.dataset.state = "error";
}

function clearResult() {
  layers.forEach((l) => map.removeLayer(l));
  layers = [];
  $("error").hidden = true;
}

function render(ans) {
  clearResult();
  $("result").hidden = false;
  $("sentence").textContent = ans.sentence;
  $("category").textContent = ans.localizability_category;
  $("meaning").textContent = ans.localizability_meaning;
  // Each warning is {code, message} (globeflow.describe.WARNING_CODES): the code rides along as a class.
  $("warnings").innerHTML = (ans.warnings || [])
    .map((w) => `<li class="warning-${esc(w.code || "other")}">${esc(w.message || w)}</li>`)
    .join("");
  $("modes").tBodies[0].innerHTML = ans.modes
    .map((m, i) => `<tr><td>${i + 1}</td><td>${esc(m.place_phrase || m.place)}<br><span class="note">${m.latitude.toFixed(3)}, ${m.longitude.toFixed(3)}</span></td>` +
      `<td class="p"><span class="bar" style="width:${Math.max(2, 60 * m.mass)}px"></span>${pct(m.mass)}</td></tr>`)
    .join("");
  $("countries").tBodies[0].innerHTML = ans.countries
    .map((c) => `<tr><td>${esc(c.name)}</td><td class="p"><span class="bar" style="width:${Math.max(2, 60 * c.probability)}px"></span>${pct(c.probability)}</td></tr>`)
    .join("");
  $("dl-geojson").href = `/v1/answers/${ans.id}.geojson`;
  $("dl-kml").href = `/v1/answers/${ans.id}.kml`;

  for (const o of ans.overlay || []) layers.push(L.imageOverlay(o.url, o.bounds, { pane: "density", opacity: 1, interactive: false }).addTo(map));
  const regions = ans.geojson.features.filter((f) => f.properties.kind === "region");
  let focus = null;
  for (const f of regions) {
    const p50 = f.properties.level < 0.7;
    const layer = L.geoJSON(f, {
      pane: "regions",
      style: { color: p50 ? "#0b6e4f" : "#174f8f", weight: p50 ? 3 : 2.5, dashArray: p50 ? null : "7 5", fillOpacity: 0, className: "region" },
    }).bindTooltip(`${Math.round(100 * f.properties.level)}% region`, { sticky: true });
    layers.push(layer.addTo(map));
    if (!p50 && f.geometry.coordinates.length) focus = layer.getBounds();
  }
  ans.modes.forEach((m, i) => {
    const r = 7 + 9 * Math.sqrt(m.mass);
    const marker = L.circleMarker([m.latitude, m.longitude], {
      pane: "modes", radius: r, color: "#d1495b", weight: 2.5, fillColor: "#fff", fillOpacity: 0.9, className: "mode",
    }).bindTooltip(`${i + 1}. ${esc(m.place)} · ${pct(m.mass)}`, { permanent: i < 3, direction: "right", offset: [r, 0], className: "mode-label" });
    layers.push(marker.addTo(map));
    layers.push(L.marker([m.latitude, m.longitude], {
      pane: "modes", interactive: false,
      icon: L.divIcon({ className: "mode-num", html: String(i + 1), iconSize: [18, 18] }),
    }).addTo(map));
  });
  const pts = L.latLngBounds(ans.modes.map((m) => [m.latitude, m.longitude]));
  const target = focus ? focus.extend(pts) : pts;
  if (target.isValid()) map.fitBounds(target.pad(0.8), { maxZoom: 5, animate: false });
  document.body.dataset.state = "done";
}

async function locate(body, label) {
  setStatus(`Locating ${label}… (a few seconds)`, true);
  try {
    const init = body instanceof FormData
      ? { method: "POST", body }
      : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const res = await fetch("/v1/locate", init);
    const data = await res.json();
    if (!res.ok) {
      const e = data.error || {};
      showError(e.message ? `${e.message}` : `request failed (${res.status})`);
      setStatus("", false);
      return;
    }
    setStatus("", false);
    render(data.answers[0]);
  } catch (err) {
    setStatus("", false);
    showError("The server did not answer: " + err);
  }
}

function askText(q) {
  q = q.trim();
  if (!q) return;
  const url = new URL(window.location.href);
  url.searchParams.set("q", q);
  history.replaceState(null, "", url);
  $("share").href = url.toString();
  locate({ text: q, overlay: true }, `“${q}”`);
}

function askPhoto(file) {
  if (!file) return;
  const form = new FormData();
  form.append("photo", file, file.name);
  form.append("overlay", "true");
  $("share").removeAttribute("href");
  locate(form, file.name);
}

$("ask").addEventListener("submit", (e) => { e.preventDefault(); askText($("q").value); });
$("share").addEventListener("click", (e) => {
  if (navigator.clipboard && $("share").href) { e.preventDefault(); navigator.clipboard.writeText($("share").href).catch(() => {}); setStatus("Link copied.", false); }
});

fetch("/v1/models").then((r) => r.json()).then((info) => {
  const m = info.loaded;
  $("model-line").textContent = `model: ${m.name} (${m.input} input)`;
  const drop = $("drop");
  if (m.input === "image") {
    drop.hidden = false;
    $("ask").hidden = true;
    $("photo-note").hidden = false;
    $("photo-note").textContent = `The model ${m.name} reads photos. Drop one above.`;
  } else {
    const photo = (info.available || []).filter((x) => x.input === "image");
    const here = photo.filter((x) => x.source !== "hub" && x.encoder_available).map((x) => x.ref);
    $("photo-note").hidden = false;
    $("photo-note").innerHTML =
      `This model (${esc(m.name)}) reads text, not photos. <details><summary>Which models take photos?</summary>` +
      (here.length ? `Models here that take photos: <code>${here.map(esc).join("</code>, <code>")}</code>. ` :
        `The published PLONK models (e.g. <code>hf:nicolas-dufour/PLONK_YFCC</code>: download it and its image encoder on a connected machine) or your own (<code>globeflow embed</code> + <code>globeflow train</code>). `) +
      `Start one with <code>globeflow serve --model …</code>; <code>globeflow models</code> lists what is here.</details>`;
  }
  const q = new URLSearchParams(window.location.search).get("q");
  if (q && m.input === "text") { $("q").value = q; askText(q); }
  else if (q) { showError(`This model takes ${m.input}, so the query in the link cannot run here.`); }
});

const drop = $("drop");
$("pick").addEventListener("click", (e) => { e.preventDefault(); $("file").click(); });
$("file").addEventListener("change", () => askPhoto($("file").files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); askPhoto(e.dataTransfer.files[0]); });
