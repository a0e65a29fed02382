"""What did each neuron learn? `storyloom inspect RUN TEXT --out page.html`.

Reads TEXT through a run and writes one self-contained HTML page (no
network, no files beside it): the text coloured by a chosen unit's
activation, Karpathy-style; the units whose activation best tracks simple
features of the text (inside quotes, inside brackets, position in the line, a
speaker's name heading a speech), by Pearson correlation; gate statistics per
layer; the probability the model gave each actual token; and its top-5
guesses on hover.

For LSTM runs the unit is a cell state, tanh(C_t), as in Karpathy's
"unreasonable effectiveness" post, read through the reference LSTM loaded with
the run's weights, which also yields the gates. For other cells it is the
top layer's output h_t.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import torch

from .corpus import clean_sources
from .errors import UserError
from .writer import Writer

SHOWN_UNITS = 24  # units whose activations the page carries (the best ranked, and the one asked for)
SPEAKER = re.compile(r"^[A-Z][A-Z '\-]*[A-Z]\.$")  # a play's speech heading, like "FIRST CITIZEN."


def features(text: str, starts: list[int]) -> dict[str, np.ndarray]:
    """Per-token features, read at each token's first character."""
    quote, depth, col, speaker = [], [], [], []
    q = d = c = 0
    lines = text.split("\n")
    heading = np.zeros(len(text), dtype=bool)
    pos = 0
    for line in lines:
        if SPEAKER.match(line.strip()):
            heading[pos : pos + len(line)] = True
        pos += len(line) + 1
    per_char = []
    for ch in text:
        per_char.append((q, d, c))
        if ch in "\"\u201c\u201d":
            q = 0 if (ch == "\u201d" or (ch == '"' and q)) else 1
        elif ch in "([{":
            d += 1
        elif ch in ")]}":
            d = max(d - 1, 0)
        c = 0 if ch == "\n" else c + 1
    for s in starts:
        qq, dd, cc = per_char[s]
        quote.append(qq)
        depth.append(dd)
        col.append(cc)
        speaker.append(heading[s])
    return {"inside quotes": np.array(quote, float), "bracket depth": np.array(depth, float),
            "position in line": np.array(col, float), "speaker heading": np.array(speaker, float)}


def correlations(acts: np.ndarray, feats: dict[str, np.ndarray]) -> list[dict]:
    """Every (unit, feature) Pearson r, strongest first; constant features are skipped."""
    a = acts - acts.mean(0)
    a_norm = np.sqrt((a**2).sum(0)) + 1e-12
    out = []
    for name, f in feats.items():
        f = f - f.mean()
        if not f.any():
            continue
        r = (a * f[:, None]).sum(0) / a_norm / np.sqrt((f**2).sum())
        out += [{"unit": int(u), "feature": name, "r": float(r[u])} for u in range(acts.shape[1])]
    return sorted(out, key=lambda x: -abs(x["r"]))


@torch.no_grad()
def read_through(w: Writer, ids: np.ndarray) -> dict:
    """Activations (T, H), gates per layer, and next-token probabilities (T, V) for ids read as one stream."""
    m = w.model.float().eval()
    x = torch.from_numpy(ids.astype(np.int64))[None].to(w.device)  # (1, T)
    r = m.cell.activations(m.inp(x))  # the cell knows what is worth showing: for LSTMs, the cell state and the gates
    probs = torch.softmax(m.out(r["h"])[0].float(), -1)  # (T, V): the guess for the token after each
    gates = {k: v.cpu() for k, v in r["gates"].items()} if r["gates"] else None
    return {"acts": r["acts"].cpu().numpy(), "gates": gates, "probs": probs.cpu().numpy(), "kind": r["kind"]}


def gate_stats(gates: dict | None) -> list[dict]:
    if gates is None:
        return []
    rows = []
    for l in range(gates["forget"].shape[0]):
        row = {"layer": l + 1}
        for g in ("forget", "input", "output"):
            v = gates[g][l].numpy()
            row[g] = {"near 0": float((v < 0.1).mean()), "near 1": float((v > 0.9).mean()), "mean": float(v.mean())}
        rows.append(row)
    return rows


def inspect_text(run: str | Path, sources, out: str | Path, chars: int = 3000, offset: int = 0, unit: int | None = None,
                 which: str = "best", encoding: str = "utf-8") -> dict:
    """`storyloom inspect`: the page for `chars` characters of the sources from `offset` on."""
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 3 or not isinstance(offset, int) or offset < 0:
        raise UserError(f"--chars must be at least 3 and --offset at least 0, got {chars} and {offset}")
    text = clean_sources(sources, encoding=encoding)[offset : offset + chars]
    return inspect(run, text, out, unit=unit, which=which)


def inspect(run: str | Path, text: str, out: str | Path, unit: int | None = None, which: str = "best") -> dict:
    """Write the page; returns the ranked correlations and gate statistics it shows."""
    w = Writer(run, which, "cpu")  # a few thousand tokens through the step-by-step reference LSTM: the CPU is enough
    text = w.clean(text)
    ids = w.tokenizer.ids(text, "replace", "the text")
    if len(ids) < 3:
        raise UserError("inspect needs a text of at least three tokens")
    pieces = [w.tokenizer.decode([i]) for i in ids.tolist()]
    # where each token starts in the text (clamped: a BPE token may hold part of a character)
    starts = [min(s, len(text) - 1) for s in np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()]
    r = read_through(w, ids)
    acts, probs = r["acts"], r["probs"]
    H = acts.shape[1]
    if unit is not None and not 0 <= unit < H:
        raise UserError(f"--unit must be between 0 and {H - 1} for this run, got {unit}")
    ranked = correlations(acts, features(text, starts))
    shown: list[int] = []
    for u in ([unit] if unit is not None else []) + [c["unit"] for c in ranked]:
        if u not in shown:
            shown.append(u)
        if len(shown) >= SHOWN_UNITS:
            break
    shown = shown or list(range(min(H, SHOWN_UNITS)))
    best_of = {u: next((c for c in ranked if c["unit"] == u), None) for u in shown}
    actual = [None] + [float(probs[t - 1, ids[t]]) for t in range(1, len(ids))]
    top5 = [[]] + [[[w.tokenizer.decode([int(i)]), round(float(probs[t - 1, i]), 4)] for i in np.argsort(-probs[t - 1])[:5]]
                   for t in range(1, len(ids))]
    data = {
        "run": str(w.run.path), "cell": w.config.model.cell, "level": w.tokenizer.kind, "kind": r["kind"], "hidden": H,
        "tokens": pieces, "units": shown,
        "labels": [f"unit {u}" + (f": {best_of[u]['feature']} (r = {best_of[u]['r']:+.2f})" if best_of[u] else "") for u in shown],
        "acts": [[round(float(v), 3) for v in acts[:, u]] for u in shown],
        "p": [None if p is None else round(p, 4) for p in actual], "top5": top5,
    }
    stats = gate_stats(r["gates"])
    seen: set[int] = set()
    best = [c for c in ranked if not (c["unit"] in seen or seen.add(c["unit"]))][:15]  # each unit once, at its strongest
    page = render(data, best, stats, text)
    Path(out).write_text(page, encoding="utf-8")
    mean_bits = float(-np.log2(np.maximum([p for p in actual[1:]], 1e-12)).mean())
    return {"ranked": best, "gates": stats, "shown": shown, "mean_bits_per_token": mean_bits}


def render(data: dict, ranked: list[dict], stats: list[dict], text: str) -> str:
    ranked_rows = "".join(f"<tr><td>{c['unit']}</td><td>{html.escape(c['feature'])}</td><td>{c['r']:+.3f}</td></tr>" for c in ranked)
    gate_rows = "".join(
        f"<tr><td>{s['layer']}</td>" + "".join(f"<td>{100 * s[g]['near 0']:.1f}%</td><td>{100 * s[g]['near 1']:.1f}%</td>"
                                             for g in ("forget", "input", "output")) + "</tr>" for s in stats)
    gates = (f"<table><tr><th>layer</th><th>forget &lt; 0.1</th><th>forget &gt; 0.9</th><th>input &lt; 0.1</th>"
             f"<th>input &gt; 0.9</th><th>output &lt; 0.1</th><th>output &gt; 0.9</th></tr>{gate_rows}</table>"
             if stats else "<p>This cell has no gates to show (gates exist for LSTM runs).</p>")
    payload = json.dumps(data, ensure_ascii=True).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>storyloom inspect: {html.escape(data['run'])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 1.5em 2em; color: #222; }}
h1 {{ font-size: 1.3em; margin: 0 0 .2em; }} h2 {{ font-size: 1.05em; margin: 1.4em 0 .4em; }}
#text {{ font: 13px/1.6 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; border: 1px solid #ddd; padding: .8em;
        max-height: 34em; overflow-y: auto; }}
#text span {{ border-radius: 2px; }}
#tip {{ position: fixed; display: none; background: #fff; border: 1px solid #888; padding: .4em .6em; font: 12px ui-monospace, monospace;
        box-shadow: 0 2px 6px rgba(0,0,0,.2); pointer-events: none; white-space: pre; }}
table {{ border-collapse: collapse; margin: .3em 0; }} td, th {{ border: 1px solid #ddd; padding: .15em .6em; text-align: right; }}
.controls {{ margin: .6em 0; }} .controls label {{ margin-right: 1.2em; }}
.legend {{ display: inline-block; width: 12em; height: .9em; vertical-align: middle; border: 1px solid #ccc; }}
.wrap {{ display: flex; gap: 3em; flex-wrap: wrap; }}
</style></head><body>
<h1>storyloom inspect</h1>
<div>run <code>{html.escape(data['run'])}</code>, cell <b>{html.escape(data['cell'])}</b>, {html.escape(data['level'])} level,
{len(data['tokens'])} tokens; colour shows the {html.escape(data['kind'])} of the chosen unit.</div>
<div class="controls">
<label>unit <select id="unit"></select></label>
<label><input type="radio" name="mode" value="act" checked> activation
 <span class="legend" style="background: linear-gradient(to right, rgb(60,110,230), #fff, rgb(230,70,50))"></span> -1 .. +1</label>
<label><input type="radio" name="mode" value="p"> confidence (probability of the actual token)
 <span class="legend" style="background: linear-gradient(to right, rgb(235,80,60), #fff, rgb(60,180,90))"></span> 0 .. 1</label>
</div>
<div id="text"></div><div id="tip"></div>
<noscript><pre>{html.escape(text)}</pre></noscript>
<div class="wrap"><div><h2>Units that track a feature of the text</h2>
<table><tr><th>unit</th><th>feature</th><th>Pearson r</th></tr>{ranked_rows}</table></div>
<div><h2>Gate statistics per layer (share of activations)</h2>{gates}</div></div>
<script id="data" type="application/json">{payload}</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent);
const sel = document.getElementById("unit"), box = document.getElementById("text"), tip = document.getElementById("tip");
D.labels.forEach((l, i) => {{ const o = document.createElement("option"); o.value = i; o.textContent = l; sel.appendChild(o); }});
const spans = D.tokens.map((t, i) => {{ const s = document.createElement("span"); s.textContent = t; s.dataset.i = i; box.appendChild(s); return s; }});
function mix(a, b, f) {{ return a.map((x, k) => Math.round(x + (b[k] - x) * f)); }}
function paint() {{
  const mode = document.querySelector("input[name=mode]:checked").value, acts = D.acts[+sel.value];
  spans.forEach((s, i) => {{
    let c;
    if (mode === "act") {{ const v = Math.max(-1, Math.min(1, acts[i])); c = v >= 0 ? mix([255,255,255], [230,70,50], v) : mix([255,255,255], [60,110,230], -v); }}
    else {{ const p = D.p[i]; c = p === null ? [240,240,240] : (p < 0.5 ? mix([235,80,60], [255,255,255], p * 2) : mix([255,255,255], [60,180,90], (p - .5) * 2)); }}
    s.style.background = `rgb(${{c[0]}},${{c[1]}},${{c[2]}})`;
  }});
}}
function show(t) {{ return t.replace(/\\n/g, "\\\\n").replace(/\\t/g, "\\\\t").replace(/ /g, "\\u2423") || "\\u2205"; }}
box.addEventListener("mousemove", e => {{
  const i = e.target.dataset && e.target.dataset.i; if (i === undefined) {{ tip.style.display = "none"; return; }}
  const lines = [`token ${{show(D.tokens[i])}}   activation ${{D.acts[+sel.value][i].toFixed(3)}}`];
  if (D.p[i] !== null) {{ lines.push(`p(actual) ${{D.p[i].toFixed(4)}}`, "model's top 5 here:"); D.top5[i].forEach(([t, p]) => lines.push(`  ${{show(t).padEnd(12)}} ${{p.toFixed(4)}}`)); }}
  tip.textContent = lines.join("\\n"); tip.style.display = "block";
  tip.style.left = Math.min(e.clientX + 14, innerWidth - 260) + "px"; tip.style.top = (e.clientY + 14) + "px";
}});
box.addEventListener("mouseleave", () => tip.style.display = "none");
sel.addEventListener("change", paint); document.querySelectorAll("input[name=mode]").forEach(r => r.addEventListener("change", paint));
paint();
</script></body></html>
"""
