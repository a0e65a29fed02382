"""The seeds' claims, measured on this machine.

long-range  Can a cell carry one symbol across K steps? A synthetic recall
            task trains rnn, gru, lstm and transformer with the same number of
            examples at each K, and plots accuracy against K.
gradients   Vanishing: ||dL_T/dh_t|| against T - t for rnn and lstm on real
            text. Exploding: a plain RNN trained by SGD at a high learning
            rate, with and without gradient-norm clipping.

Each writes PNG plots, results.json and report.md into its --out directory.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import plots
from .batches import Batches
from .config import ModelConfig
from .corpus import clean_sources
from .errors import UserError
from .model import LanguageModel
from .runtime import set_threads
from .tokenize import CharTokenizer

# -- long-range recall -----------------------------------------------------
KEYS, NOISE = 8, 16  # answer symbols, distractor symbols
QUERY = KEYS + NOISE  # the question mark
RECALL_VOCAB = KEYS + NOISE + 1
SOLVED = 0.9  # accuracy that counts as solving a distance


def recall_batch(K: int, B: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B sequences of K+1 tokens: a key, K-1 distractors, then the question; the answer is the key.

    The key sits K steps before the question, so answering needs memory of
    exactly that span; guessing is right 1 time in KEYS.
    """
    key = torch.randint(0, KEYS, (B,), generator=gen)
    noise = torch.randint(KEYS, KEYS + NOISE, (B, K - 1), generator=gen)
    x = torch.cat([key[:, None], noise, torch.full((B, 1), QUERY)], 1)  # (B, K+1)
    return x, key


# The cells compared, as (cell, forget-gate bias). storyloom's LSTM starts its
# forget bias at 1 (f = 0.73); a memory task over many steps also gets one
# started at 3 (f = 0.95), to show how much of the LSTM's reach is its gate.
VARIANTS = {"rnn": ("rnn", None), "gru": ("gru", None), "lstm": ("lstm", None), "lstm, forget bias 3": ("lstm", 3.0),
            "transformer": ("transformer", None)}


def recall_model(cell: str, K: int, hidden: int, forget_bias: float | None = None) -> LanguageModel:
    heads = 4 if hidden % 4 == 0 else 1
    return LanguageModel(ModelConfig(vocab_size=RECALL_VOCAB, input="embedding", embed=16, hidden=hidden,
                                     layers=1 if cell != "transformer" else 2, dropout=0.0, cell=cell, heads=heads,
                                     context=K + 1, forget_bias=1.0 if forget_bias is None else forget_bias))


def train_recall(cell: str, K: int, steps: int, hidden: int = 64, batch: int = 32, lr: float = 3e-3, seed: int = 0) -> float:
    """Accuracy on 512 fresh sequences after `steps` batches of training; `cell` is a key of VARIANTS."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    kind, forget_bias = VARIANTS[cell]
    m = recall_model(kind, K, hidden, forget_bias)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for _ in range(steps):
        x, y = recall_batch(K, batch, gen)
        logits, _ = m(x)
        loss = F.cross_entropy(logits[:, -1], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    m.eval()
    with torch.no_grad():
        x, y = recall_batch(K, 512, torch.Generator().manual_seed(seed + 10_000))
        return (m(x)[0][:, -1].argmax(-1) == y).float().mean().item()


def long_range(out: str | Path, distances=(2, 5, 10, 20, 50, 100, 200, 300), cells=tuple(VARIANTS),
               steps: int = 1000, hidden: int = 64, threads: int = 0, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    results: dict[str, list[tuple[int, float]]] = {c: [] for c in cells}
    seconds: dict[str, float] = {c: 0.0 for c in cells}
    for K in distances:
        for cell in cells:
            t = time.perf_counter()
            acc = train_recall(cell, K, steps, hidden)
            seconds[cell] += time.perf_counter() - t
            results[cell].append((K, acc))
            log(json.dumps({"experiment": "long-range", "cell": cell, "K": K, "accuracy": round(acc, 4)}))
    solved = {c: max((K for K, a in pts if a >= SOLVED), default=0) for c, pts in results.items()}
    plots.accuracy_by_distance(results, 1 / KEYS, out / "long_range.png")
    summary = {"distances": list(distances), "steps": steps, "batch": 32, "hidden": hidden, "solved_threshold": SOLVED,
               "accuracy": results, "largest_K_solved": solved, "seconds": {c: round(s, 1) for c, s in seconds.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    rows = "\n".join(f"| {c} | {solved[c]} | " + " | ".join(f"{a:.2f}" for _, a in results[c]) + " |" for c in cells)
    (out / "report.md").write_text(
        f"# Long-range recall\n\nA key symbol, K-1 distractors, a question: the answer is the key (chance {1 / KEYS:.3f}). "
        f"Each cell trains {steps} batches of 32 (hidden {hidden}, Adam 3e-3, clipping 1.0) at each K; accuracy on 512 new "
        f"sequences. Solved means accuracy >= {SOLVED}.\n\n"
        f"| cell | largest K solved | " + " | ".join(f"K={K}" for K in distances) + " |\n"
        "|---|---|" + "---|" * len(distances) + f"\n{rows}\n\n![accuracy against K](long_range.png)\n")
    return summary


# -- gradients ---------------------------------------------------------------
def _text_ids(sources, chars: int) -> tuple[CharTokenizer, np.ndarray]:
    text = clean_sources(sources)[:chars]
    if len(text) < 10_000:
        raise UserError("the gradients experiment needs at least 10,000 characters of text")
    tok = CharTokenizer.fit(text)
    return tok, tok.ids(text).astype(np.int64)


def hidden_grad_norms(m: LanguageModel, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Mean over the batch of ||dL_T / dh_{T-d}|| for d = 1..T-1, where L_T is the loss at the last step only.

    Element 0 is d = 1: the state the last step started from.
    """
    state = m.initial_state(x.shape[0])
    hs = []
    for t in range(x.shape[1]):  # one step at a time, so each h_t is a node on the recurrent path
        if t:
            state[0].retain_grad()
            hs.append(state[0])
        logits, state = m(x[:, t : t + 1], state)
    F.cross_entropy(logits[:, -1], y[:, -1]).backward()
    norms = [h.grad[-1].norm(dim=-1).mean().item() for h in hs]  # top layer, (B, H) -> mean norm
    return norms[::-1]


def _train_text(m: LanguageModel, ids: np.ndarray, steps: int, opt, clip: float, T: int = 64, B: int = 32) -> tuple[list, list]:
    """Truncated BPTT over the text; the loss and the (pre-clipping) gradient norm of every step."""
    batches, state, losses, norms = Batches(ids, B, T), None, [], []
    for s in range(steps):
        x, y = batches[s % len(batches)]
        logits, state = m(x.long(), state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.long().flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(m.parameters(), clip if clip else float("inf"))
        losses.append(loss.item())
        norms.append(norm.item())
        if not (math.isfinite(losses[-1]) and math.isfinite(norms[-1])):
            break  # diverged: nothing after this is meaningful
        opt.step()
        state = tuple(t.detach() for t in state)
    return losses, norms


def gradients(out: str | Path, sources=("shakespeare",), distance: int = 100, warm_steps: int = 150, high_lr: float = 5.0,
              steps: int = 300, hidden: int = 128, threads: int = 0, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    tok, ids = _text_ids(sources, 400_000)
    V = len(tok)
    # Vanishing: a briefly trained model of each cell, the loss at the end of a real passage.
    norms = {}
    for cell in ("rnn", "lstm"):
        torch.manual_seed(0)
        m = LanguageModel(ModelConfig(vocab_size=V, embed=32, hidden=hidden, layers=1, dropout=0.0, cell=cell))
        _train_text(m, ids, warm_steps, torch.optim.Adam(m.parameters(), lr=3e-3), clip=1.0)
        start = torch.randint(0, len(ids) - distance - 2, (32,), generator=torch.Generator().manual_seed(1))
        x = torch.stack([torch.from_numpy(ids[s : s + distance]) for s in start.tolist()])
        y = torch.stack([torch.from_numpy(ids[s + 1 : s + distance + 1]) for s in start.tolist()])
        norms[cell] = hidden_grad_norms(m, x, y)
        log(json.dumps({"experiment": "vanishing", "cell": cell, "norm_at_1": norms[cell][0], "norm_at_50": norms[cell][49]}))
    plots.gradient_norms(norms, out / "vanishing.png")

    def decades_per_10(ys):  # how fast the norm falls, from a log-linear fit over distances 1..50
        d = np.arange(1, 51)
        return float(-np.polyfit(d, np.log10(np.maximum(ys[:50], 1e-30)), 1)[0] * 10)

    decay = {c: decades_per_10(np.array(v)) for c, v in norms.items()}
    # Exploding: a tanh RNN, plain SGD at a high learning rate, the same start with and without clipping.
    runs = {}
    for clip in (0.0, 1.0):
        torch.manual_seed(0)
        m = LanguageModel(ModelConfig(vocab_size=V, embed=32, hidden=hidden, layers=1, dropout=0.0, cell="rnn"))
        losses, gnorms = _train_text(m, ids, steps, torch.optim.SGD(m.parameters(), lr=high_lr), clip=clip)
        runs["clipped at 1.0" if clip else "no clipping"] = {"loss": losses, "grad_norm": gnorms}
        log(json.dumps({"experiment": "exploding", "clip": clip, "steps_run": len(losses), "final_loss": losses[-1],
                        "max_grad_norm": max(gnorms)}))
    plots.training_runs({k: v["loss"] for k, v in runs.items()}, "training loss (nats)",
                        f"tanh RNN, SGD at lr {high_lr}", out / "exploding_loss.png")
    plots.training_runs({k: v["grad_norm"] for k, v in runs.items()}, "gradient norm before clipping",
                        f"tanh RNN, SGD at lr {high_lr}", out / "exploding_grad_norm.png")

    def outcome(r):
        ls = r["loss"]
        if not all(math.isfinite(v) for v in ls):
            return f"diverged to a non-finite loss at step {len(ls)}"
        return f"ended at loss {ls[-1]:.3f} (started {ls[0]:.3f}, best {min(ls):.3f})"

    summary = {"distance": distance, "hidden": hidden, "warm_steps": warm_steps, "norms": norms, "decades_per_10_steps": decay,
               "high_lr": high_lr, "steps": steps, "exploding": {k: {"outcome": outcome(v), "max_grad_norm": max(v["grad_norm"]),
                                                                    "final_loss": v["loss"][-1]} for k, v in runs.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    ex = summary["exploding"]
    (out / "report.md").write_text(
        "# Gradients\n\n## Vanishing\n\n"
        f"rnn and lstm (hidden {hidden}), each trained {warm_steps} steps on the text, then the loss at the last of "
        f"{distance} characters of real text differentiated with respect to every hidden state before it "
        "(mean over 32 passages).\n\n"
        "| cell | norm at T-t=1 | at 10 | at 50 | at " + str(distance - 1) + " | decades lost per 10 steps |\n|---|---|---|---|---|---|\n"
        + "".join(f"| {c} | {v[0]:.2e} | {v[9]:.2e} | {v[49]:.2e} | {v[-1]:.2e} | {decay[c]:.2f} |\n" for c, v in norms.items())
        + "\n![gradient norm against distance](vanishing.png)\n\n## Exploding\n\n"
        f"A tanh RNN trained by plain SGD at learning rate {high_lr} for up to {steps} steps of 32x64 characters, "
        "from the same initial weights:\n\n"
        + "".join(f"- {k}: {v['outcome']}; largest gradient norm {v['max_grad_norm']:.3g}\n" for k, v in ex.items())
        + "\n![loss](exploding_loss.png)\n![gradient norm](exploding_grad_norm.png)\n")
    return summary


EXPERIMENTS = {"long-range": long_range, "gradients": gradients}


def run_experiment(name: str, out: str | Path, steps: int | None = None, threads: int = 0) -> Path:
    """`storyloom experiment NAME`: its plots, results.json and report.md in `out`, which is returned."""
    if name not in EXPERIMENTS:
        raise UserError(f"no experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserError(f"--steps must be a positive integer, got {steps}")
    EXPERIMENTS[name](out, threads=threads, **({"steps": steps} if steps is not None else {}))
    return Path(out)
