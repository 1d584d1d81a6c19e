// TaskFlow dashboard: the little that needs a script. Everything it puts on
// the page goes through textContent or SVG attributes, never as HTML: task
// data is untrusted. Served from the host itself, under a CSP that allows
// no inline script.
"use strict";

(function () {
  // --- Overview: poll the numbers, draw the charts. ---
  const overview = document.querySelector("[data-live]");
  if (overview) {
    const samples = []; // {t, finished, failed}
    const keep = 90;
    const poll = async () => {
      try {
        const response = await fetch(overview.dataset.live, { credentials: "same-origin", headers: { accept: "application/json" } });
        if (!response.ok) return;
        const data = await response.json();
        const counts = data.stats.system.tasks;
        for (const el of overview.querySelectorAll("[data-count]")) {
          el.textContent = String(counts[el.dataset.count] ?? 0);
        }
        const queue = data.stats.system.queue;
        setField("queued", queue.total);
        setField("delayed", queue.delayed);
        for (const el of overview.querySelectorAll("[data-queue]")) {
          el.textContent = String(queue.ready[el.dataset.queue] ?? 0);
        }
        updateHosts(data.hosts, data.now);
        samples.push({ t: Date.now() / 1000, finished: (counts.completed ?? 0) + (counts.failed ?? 0), failed: counts.failed ?? 0 });
        if (samples.length > keep) samples.shift();
        draw();
      } catch (_) { /* the next poll tries again */ }
    };
    const setField = (name, value) => {
      const el = overview.querySelector(`[data-field="${name}"]`);
      if (el) el.textContent = String(value);
    };
    const updateHosts = (hosts, now) => {
      const body = document.querySelector("#hosts tbody");
      if (!body) return;
      body.replaceChildren();
      for (const host of hosts) {
        const age = Math.max(0, Math.round((Date.parse(now) - Date.parse(host.seen_at)) / 1000));
        const row = document.createElement("tr");
        row.className = age > 30 ? "gone" : "alive";
        row.dataset.host = host.name;
        // Loaded now: a version replaced since keeps its counts, not its load time.
        const plugins = host.plugins
          .filter((p) => p.load_ms !== undefined)
          .map((p) => `${p.name} ${p.digest.slice(0, 12)}`)
          .join(", ");
        for (const text of [host.name, `${host.seen_at} (${age} s ago${age > 30 ? ", gone" : ""})`, host.running, host.workers, host.version, plugins]) {
          const cell = document.createElement("td");
          cell.textContent = String(text);
          row.appendChild(cell);
        }
        body.appendChild(row);
      }
    };
    const line = (svg, values) => {
      const ns = "http://www.w3.org/2000/svg";
      const max = Math.max(1, ...values);
      const step = values.length > 1 ? 300 / (values.length - 1) : 0;
      const points = values.map((v, i) => `${(i * step).toFixed(1)},${(78 - (v / max) * 74).toFixed(1)}`).join(" ");
      const polyline = document.createElementNS(ns, "polyline");
      polyline.setAttribute("points", points);
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", "2");
      label.setAttribute("y", "10");
      label.setAttribute("font-size", "9");
      label.textContent = `max ${max.toFixed(max < 10 ? 1 : 0)}`;
      svg.replaceChildren(polyline, label);
    };
    const draw = () => {
      const rates = [], failures = [];
      for (let i = 1; i < samples.length; i++) {
        const a = samples[i - 1], b = samples[i];
        const seconds = Math.max(0.001, b.t - a.t);
        const finished = Math.max(0, b.finished - a.finished);
        rates.push(finished / seconds);
        failures.push(finished ? (100 * Math.max(0, b.failed - a.failed)) / finished : 0);
      }
      const throughput = document.getElementById("chart-throughput");
      const failed = document.getElementById("chart-failures");
      if (throughput) line(throughput, rates);
      if (failed) line(failed, failures);
    };
    poll();
    setInterval(poll, 2000);
  }

  // --- JSON editors: say what is wrong before the form is sent. ---
  for (const editor of document.querySelectorAll("textarea[data-json]")) {
    const problem = document.getElementById(editor.dataset.json);
    const check = () => {
      const text = editor.value.trim();
      try {
        if (text) JSON.parse(text);
        editor.classList.remove("invalid");
        editor.setCustomValidity("");
        if (problem) { problem.hidden = true; problem.textContent = ""; }
      } catch (e) {
        editor.classList.add("invalid");
        editor.setCustomValidity("The payload is not valid JSON");
        if (problem) { problem.hidden = false; problem.textContent = `Not valid JSON: ${e.message}`; }
      }
    };
    editor.addEventListener("input", check);
    check();
  }

  // --- Plugin upload: the file as the request body, the form token in a header. ---
  const upload = document.getElementById("upload");
  if (upload) {
    const result = document.getElementById("upload-result");
    upload.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = document.getElementById("upload-name").value.trim();
      const file = document.getElementById("upload-file").files[0];
      if (!name || !file) return;
      result.textContent = `Uploading ${file.name} (${file.size} bytes)…`;
      try {
        const response = await fetch(upload.dataset.upload + encodeURIComponent(name), {
          method: "POST",
          credentials: "same-origin",
          headers: { "content-type": "application/wasm", "x-form-token": upload.dataset.formToken },
          body: file,
        });
        const body = await response.json().catch(() => ({}));
        if (response.ok) {
          result.textContent = `Loaded ${body.name}, digest ${String(body.digest).slice(0, 12)}: every host loads it next.`;
          setTimeout(() => window.location.reload(), 1500);
        } else {
          result.textContent = `Refused (${response.status}): ${body.message ?? response.statusText}`;
        }
      } catch (e) {
        result.textContent = `Upload failed: ${e.message}`;
      }
    });
  }

  // --- Task list: select all. ---
  for (const all of document.querySelectorAll("input[data-select-all]")) {
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll(`input[type=checkbox][name="${all.dataset.selectAll}"]`)) {
        box.checked = all.checked;
      }
    });
  }
})();
