"""Writing with carried state: the prompt is read once, then one LSTM step per character.

`Decoder` steps a model; `sample` draws a batch of continuations with the
filters of sampling.py; `beam` runs length-normalised beam search; `Stops`
cuts text before a stop string while it streams. Tokens here are ids; text
only appears in `Stops`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from . import native
from .cells import cached
from .model import LanguageModel, State
from .runtime import pace
from .config import SampleConfig
from .sampling import ban, draw, shape_logits


class Decoder:
    """Reads a prompt in one call, then steps one token per call.

    On CUDA, a cell that declares itself `graphable` has its one-token step
    captured as a CUDA graph per batch size: writing at batch 1 is bound by
    launching dozens of tiny kernels per token, and a graph replays them as
    one launch (`graphs=False` keeps the eager step, for comparison). On a
    CPU, `sample` writes one stream through the C++ loop of native.py where
    it covers the settings (`native=False` keeps the Python loop).
    `precision` is how the prompt is read (model.read: fp32, bf16 autocast, or
    the cell's int8 weights); `decode` how the step holds them (cells.Matrix:
    fp32 exact, bf16, int8).
    """

    MAX_GRAPHS = 8  # batch sizes kept captured at once (beam search shrinks its batch as hypotheses end)

    def __init__(self, model: LanguageModel, device: torch.device, precision: str = "fp32", graphs: bool = True,
                 decode: str = "fp32", native: bool = True):
        self.model, self.device, self.precision, self.decode = model.eval(), device, precision, decode
        self.graphs = graphs and device.type == "cuda" and model.cell.graphable
        self.native = native  # `sample` may write one stream through native.py's loop (the same text, faster)

    @torch.inference_mode()
    def read(self, ids: np.ndarray, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed ids (P,) to one stream, or (G, P) to G streams, in a single call; logits (G, V) for the next token."""
        x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        x = x[None] if x.dim() == 1 else x  # (G, P)
        got = native.read(self.model, x, state) if self.native and self.precision == "int8" else None
        logits, state = got or self.model.read(x, state, self.precision)  # (G, P, V)
        # a copy: a view of the last position would keep all P positions' logits alive while the caller keeps it
        return logits[:, -1].float().cpu().clone(), state

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token per stream: ids (B,) -> logits (B, V)."""
        pace()
        if state[0].dtype != torch.float32:  # a prompt read in bf16
            state = tuple(s.float() for s in state)
        if self.graphs:
            logits, state = self._graph(ids, state)(ids, state)
        else:
            logits, state = self.model.step(ids.to(self.device), state, self.decode)  # (B, V)
        return logits.float().cpu(), state

    def _graph(self, ids: torch.Tensor, state: State) -> "StepGraph":
        # A new dict whenever a parameter changes: a graph reads the weights it was captured with.
        graphs = cached(self.model, "_step_graphs", dict)
        key = (ids.shape[0], self.decode)
        if key not in graphs:
            if len(graphs) >= self.MAX_GRAPHS:
                graphs.pop(next(iter(graphs)))
            graphs[key] = StepGraph(self.model, ids.to(self.device), state, self.decode)
        return graphs[key]


class StepGraph:
    """model.step for B streams, captured once as a CUDA graph and replayed on static buffers."""

    def __init__(self, model: LanguageModel, ids: torch.Tensor, state: State, decode: str = "fp32"):
        self.ids, self.state = ids.clone(), tuple(s.clone() for s in state)  # the addresses the graph reads
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the first call builds cached weights and library handles: not capturable
            model.step(self.ids, self.state, decode)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits, self.out = model.step(self.ids, self.state, decode)  # (B, V), the state after the step

    def __call__(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.ids.copy_(ids)
        for buf, s in zip(self.state, state):
            buf.copy_(s)
        self.graph.replay()
        # The next replay overwrites the output buffers; a caller may keep this state (beam search does).
        return self.logits, tuple(s.clone() for s in self.out)


def expand(logits: torch.Tensor, state: State, B: int) -> tuple[torch.Tensor, State]:
    """Copy a one-stream (logits, state) to B streams."""
    return logits.expand(B, -1).clone(), tuple(s.expand(-1, B, -1).contiguous() for s in state)


def sample(dec: Decoder, logits: torch.Tensor, state: State, recent: np.ndarray, cfg: SampleConfig, banned,
           seeds: list[int], length: int) -> Iterator[torch.Tensor]:
    """Yield next ids (B,) for B = len(seeds) streams, forever if length is 0.

    `logits`/`state` are where the prompt left one stream; `recent` holds the
    prompt's last ids for the repetition penalty; `banned` ids are never
    drawn. Memory stays constant.
    """
    B = len(seeds)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    logits, state = expand(logits, state, B)
    W = cfg.lookback
    rec = torch.as_tensor(np.asarray(recent[-W:] if W else recent[:0], dtype=np.int64)).expand(B, -1)  # (B, <=W)
    n = 0
    fast = native.loop(dec.model, dec.decode, dec.device, cfg, banned, B) if dec.native else None
    while fast is not None and (length == 0 or n < length):  # the loop below, in C++, a chunk of tokens a call
        k = native.CHUNK if n else 1  # the first token at once: the first character waits for no chunk
        k = min(k, length - n) if length else k
        pace()
        ids, logits, state, rec = fast(logits, state, rec, k, gens[0])
        for i in ids:
            yield torch.tensor([i])
        n += k
    while length == 0 or n < length:
        ids = draw(shape_logits(logits, cfg, rec, banned), cfg.temperature, gens)  # (B,)
        yield ids
        if W:
            rec = torch.cat([rec, ids[:, None]], 1)[:, -W:]
        logits, state = dec.step(ids, state)
        n += 1


def beam(dec: Decoder, logits: torch.Tensor, state: State, width: int, length: int, banned=(),
         stopped=lambda ids: False) -> list[int]:
    """Length-normalised beam search: the continuation with the best mean log-probability.

    A hypothesis for which `stopped(ids)` is true (it wrote a stop string) is
    finished; the caller cuts the text. width 1 is greedy decoding.
    """
    V = logits.shape[-1]
    scores = torch.zeros(1)  # (W,) summed log-probabilities
    seqs: list[list[int]] = [[]]
    done: list[tuple[float, list[int]]] = []  # (mean log-prob, ids)
    for _ in range(length):
        logp = torch.log_softmax(ban(logits, banned), -1)  # (W, V)
        total = (scores[:, None] + logp).flatten()
        k = min(width, int(torch.isfinite(total).sum()))
        if k == 0:
            break
        top = total.topk(k)
        parents, toks = top.indices // V, top.indices % V
        keep, new_seqs = [], []
        for j, (p, t) in enumerate(zip(parents.tolist(), toks.tolist())):
            seq = seqs[p] + [t]
            if stopped(seq):
                done.append((top.values[j].item() / len(seq), seq))
            else:
                keep.append(j)
                new_seqs.append(seq)
        if not keep:
            seqs = []
            break
        keep_t = torch.tensor(keep)
        seqs, scores = new_seqs, top.values[keep_t]
        state = tuple(s[:, parents[keep_t]].contiguous() for s in state)
        logits, state = dec.step(toks[keep_t], state)
    done += [(sc / max(len(sq), 1), sq) for sc, sq in zip(scores.tolist(), seqs)]
    return max(done, key=lambda d: d[0])[1] if done else []


class Stops:
    """Streams text, cutting it before the first stop string; holds back possible starts of one."""

    def __init__(self, stops: str | tuple[str, ...] | list[str] = ()):
        self.stops = [s for s in ((stops,) if isinstance(stops, str) else stops) if s]
        self.buf = ""
        self.done = False

    def push(self, piece: str) -> str:
        """Text that is safe to show now; sets `done` when a stop string appeared."""
        if self.done:
            return ""
        if not self.stops:
            return piece
        self.buf += piece
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf, self.done = self.buf[: min(hits)], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(self.buf) + 1)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold :]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def next_words(dec: Decoder, logits: torch.Tensor, state: State, boundary: set[int], k: int,
               max_len: int = 24) -> list[tuple[list[int], float]]:
    """The k likeliest next words with their log-probabilities.

    A word is a run of non-boundary ids (boundary: space, newline) that a
    boundary id follows; its probability includes that boundary, so "the"
    is not counted inside "then". A small beam search over characters.
    """
    V = logits.shape[-1]
    width = max(2 * k, 8)
    bmask = torch.zeros(V, dtype=torch.bool)
    bmask[sorted(boundary)] = True
    seqs: list[list[int]] = [[]]
    lps = torch.zeros(1)  # (n,) log-probability of each live prefix
    logp = torch.log_softmax(logits, -1)  # (n, V)
    done: list[tuple[list[int], float]] = []
    for _ in range(max_len):
        ends = lps + torch.logsumexp(logp.masked_fill(~bmask, float("-inf")), -1)  # (n,)
        done += [(sq, e) for sq, e in zip(seqs, ends.tolist()) if sq]
        kth = sorted((d[1] for d in done), reverse=True)[k - 1] if len(done) >= k else float("-inf")
        total = (lps[:, None] + logp.masked_fill(bmask, float("-inf"))).flatten()  # (n*V,)
        top = total.topk(min(width, total.numel()))
        keep = top.values > max(kth, float("-inf"))  # a prefix below the k-th word cannot beat it
        if not keep.any():
            break
        idx = top.indices[keep]
        parents, toks = idx // V, idx % V
        seqs = [seqs[p] + [t] for p, t in zip(parents.tolist(), toks.tolist())]
        lps = top.values[keep]
        state = tuple(s[:, parents].contiguous() for s in state)
        logits, state = dec.step(toks, state)
        logp = torch.log_softmax(logits, -1)
    return sorted(done, key=lambda d: -d[1])[:k]
