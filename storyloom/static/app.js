// The writing desk: talks to this server's own /v1 routes only (no CDN, no other network).
"use strict";
const $ = (id) => document.getElementById(id);
let models = [], controller = null, story = "", proposal = "";

function headers() {  // a server started with --api-key wants it on every /v1 call; kept for this tab only
  const key = sessionStorage.getItem("storyloom-key");
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

function settings() {
  return { model: $("model").value, temperature: parseFloat($("temperature").value), top_p: parseFloat($("top_p").value),
           max_tokens: parseInt($("length").value, 10) || 200, logprobs: $("confidence").checked ? 0 : null };
}

function colour(lp) {  // probability 1 -> no tint, low -> red
  const p = Math.exp(lp), a = Math.min(0.85, (1 - p) * 0.9);
  return `rgba(220, 60, 40, ${a.toFixed(2)})`;
}

async function loadModels() {
  const r = await fetch("/v1/models", { headers: headers() });
  if (r.status === 401) {
    const key = window.prompt("This server needs its API key:");
    if (key) { sessionStorage.setItem("storyloom-key", key); return loadModels(); }
    $("status").textContent = "this server needs its API key";
    return;
  }
  models = (await r.json()).data;
  $("model").innerHTML = models.map((m) => `<option value="${m.id}">${m.id}</option>`).join("");
  showFacts();
}

function showFacts() {
  const m = models.find((x) => x.id === $("model").value);
  if (!m) return;
  const f = m.storyloom;
  $("facts").textContent = `${f.preset} preset · ${f.cell} ${f.layers}x${f.hidden} · ${(f.params / 1e6).toFixed(2)}M parameters · ` +
    `${f.level} level, ${f.vocab} tokens · val bpc ${f.val_bpc === null ? "?" : f.val_bpc.toFixed(3)}`;
  const c = f.curve, svg = $("curve");
  if (c.length < 2) { svg.innerHTML = ""; return; }
  const xs = c.map((p) => p[0]), ys = c.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pts = c.map(([x, y]) => `${(4 + 172 * (x - x0) / (x1 - x0 || 1)).toFixed(1)},${(4 + 40 * (y - y0) / (y1 - y0 || 1)).toFixed(1)}`);
  svg.innerHTML = `<title>val bpc ${y1.toFixed(2)} -> ${y0.toFixed(2)}</title><polyline points="${pts.join(" ")}"/>`;
}

function render() {  // the story (co-writing) and what is being written
  const out = $("output");
  out.innerHTML = "";
  if ($("mode").value === "cowrite") {
    const s = document.createElement("span");
    s.className = "story"; s.textContent = story; out.appendChild(s);
  }
  return out;
}

function append(out, text, logprobs, cls) {
  if (logprobs && logprobs.tokens.length) {
    for (let i = 0; i < logprobs.tokens.length; i++) {
      const s = document.createElement("span");
      s.className = cls; s.textContent = logprobs.tokens[i];
      s.style.background = colour(logprobs.token_logprobs[i]);
      s.title = `p = ${Math.exp(logprobs.token_logprobs[i]).toFixed(3)}`;
      out.appendChild(s);
    }
  } else if (text) {
    const s = document.createElement("span");
    s.className = cls; s.textContent = text; out.appendChild(s);
  }
}

async function write(prompt, cls) {
  controller = new AbortController();
  busy(true);
  const out = render();
  let written = "";
  try {
    const r = await fetch("/v1/completions", { method: "POST", headers: headers(),
      body: JSON.stringify({ ...settings(), prompt, stream: true }), signal: controller.signal });
    if (!r.ok) { $("status").textContent = (await r.json()).error.message; return ""; }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const c = JSON.parse(data).choices[0];
        written += c.text;
        append(out, c.text, c.logprobs, cls);
        $("status").textContent = `${written.length} characters`;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") $("status").textContent = String(e);
  } finally {
    busy(false);
  }
  return written;
}

function busy(on) {
  $("write").disabled = on; $("stop").disabled = !on;
  for (const id of ["accept", "another", "goon"]) $(id).disabled = on || !proposal;
}

async function propose() {
  proposal = "";
  proposal = await write(story, "proposal");
  $("edit").value = proposal;
  busy(false);
}

$("write").onclick = async () => {
  if ($("mode").value === "cowrite") {
    story = $("prompt").value;
    await propose();
  } else {
    await write($("prompt").value, "written");
  }
};
$("stop").onclick = () => controller && controller.abort();
$("accept").onclick = () => { story += proposal; proposal = ""; $("prompt").value = story; render(); busy(false); };
$("another").onclick = () => propose();
$("goon").onclick = async () => { story += $("edit").value; $("prompt").value = story; await propose(); };
$("mode").onchange = () => {
  const co = $("mode").value === "cowrite";
  $("cowrite-buttons").hidden = !co; $("edit").hidden = !co;
  $("write").textContent = co ? "Propose" : "Write";
  proposal = ""; render(); busy(false);
};
for (const id of ["temperature", "top_p"]) {
  $(id).oninput = () => { $(`${id}-value`).textContent = $(id).value; };
}
$("model").onchange = showFacts;
loadModels();
