"""`storyloom serve`: trained runs over HTTP, an OpenAI-compatible completions API and a web page to write with.

    storyloom serve runs/demo                    # http://127.0.0.1:8000/
    app = storyloom.serve.create_app({"demo": "runs/demo"})   # the ASGI app, to embed

Routes: GET /v1/models, POST /v1/completions (OpenAI's shape, streamed as
server-sent events), POST /v1/score, POST /v1/next, GET /health, GET
/metrics (Prometheus), and the page at /. The server is a thin adapter:
text goes through `Writer` (writer.py) and decoding.py exactly as
`storyloom generate` does.

Many writers at once: each model has one `Engine`, a thread that advances
every active stream of that model by one token per batched step. Streams join
between steps (their prompts read with the sequence kernel, streams with
prompts of one length read as one batch) and leave when done or when their
client goes away. The engine never waits for a client: what a stream writes
is appended to its buffer, and each chunk sent is everything written since
the last one, so a slow reader gets fewer, longer chunks and stalls nobody.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import native
from .config import DataConfig, LoadConfig, SampleConfig, ServeConfig
from .cpu import physical_cores
from .decoding import Decoder, Stops, next_words
from .errors import UserError
from .runtime import stop_signals
from .sampling import draw, shape_logits
from .writer import Writer, draw_seed

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("storyloom.serve")


# -- errors: OpenAI's shape, naming the field ---------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_body(message: str, param: str | None, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _param_of(e: UserError) -> str | None:
    """The request field a settings check names (`--top-p` -> top_p)."""
    m = re.search(r"--([a-z][a-z-]*)", str(e))
    return m.group(1).replace("-", "_") if m else None


def _user(e: UserError, param: str | None = None) -> ApiError:
    return ApiError(400, str(e).replace("--", "") if param is None else str(e), param or _param_of(e))


# -- requests ------------------------------------------------------------------
class Sampling(BaseModel):
    """Sampling fields every writing route accepts; checked again by SampleConfig, whose words name the field."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float = SampleConfig.temperature
    top_p: float = SampleConfig.top_p
    top_k: int | None = None
    repetition_penalty: float = SampleConfig.repetition_penalty
    ban: str = ""
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    def sample_config(self) -> SampleConfig:
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stop) > 4 or any(not isinstance(s, str) or len(s) > 200 for s in stop):
            raise ApiError(400, "stop: at most 4 strings of at most 200 characters", "stop")
        try:
            return SampleConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                repetition_penalty=self.repetition_penalty, ban=self.ban, stop=tuple(s for s in stop if s))
        except UserError as e:
            raise _user(e) from None


class CompletionRequest(Sampling):
    prompt: str | list[str] = ""
    max_tokens: int = Field(16, ge=0)
    n: int = Field(1, ge=1)
    stream: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list) and not 1 <= len(v) <= 64:
            raise ValueError("a list of 1 to 64 prompts")
        return v


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    text: str


class NextRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str = ""
    n: int = Field(5, ge=1, le=50)
    unit: str = Field("token", pattern="^(token|word)$")


# -- one stream of writing -----------------------------------------------------
class Stream:
    """One choice being written: its draws, its text so far, and the way to tell its reader."""

    def __init__(self, writer: Writer, ids: np.ndarray, cfg: SampleConfig, banned: tuple[int, ...], seed: int, length: int,
                 logprobs: int | None = None, loop: asyncio.AbstractEventLoop | None = None, event: asyncio.Event | None = None):
        self.prompt_ids, self.cfg, self.banned, self.seed, self.length = ids, cfg, banned, seed, length
        self.logprobs = logprobs
        self.gen = torch.Generator().manual_seed(seed)
        self.W = cfg.lookback
        self.recent = torch.as_tensor(np.asarray(ids[-self.W:] if self.W else ids[:0], dtype=np.int64))[None]  # (1, <=W)
        self.piece, self.stops = writer.tokenizer.stream(), Stops(cfg.stop)
        # streams drawn together share these (the stop strings act on text, after the draw)
        self.key = (cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty, cfg.penalty_window, banned)
        self.logits: torch.Tensor | None = None  # (1, V) for the next draw
        self.state = None  # (L, 1, H) ...: this stream's row until it joins the batch
        self.written = 0  # tokens drawn
        self.text, self.sent = "", 0  # what the reader may show, and how much of it went out
        self.tokens: list[tuple[str, float, dict | None]] = []  # (piece, logprob, top) per token, for logprobs
        self.finish: str | None = None  # "stop" or "length" once done
        self.cancelled = False
        self.taken_end = False  # the reader has seen the end
        self.started = time.perf_counter()
        self.first_at: float | None = None  # when its first character was written
        self.timed = False  # its first character's time went into the metrics
        self.loop, self.event = loop, event  # the reader's loop, and the event it waits on (one per request)
        self.lock = threading.Lock()

    def add(self, token: int, lp: float | None, top: dict | None) -> None:
        """The engine drew `token` for this stream (engine thread)."""
        piece = self.piece(token)
        out = self.stops.push(piece)
        self.written += 1
        with self.lock:
            self.text += out
            if self.logprobs is not None:
                self.tokens.append((piece, lp, top))
            if self.stops.done:
                self.finish = "stop"
            elif self.written >= self.length:
                self.text += self.stops.flush()
                self.finish = "length"
        if out and self.first_at is None:
            self.first_at = time.perf_counter()
        self.wake()

    def end(self, reason: str) -> None:
        with self.lock:
            if self.finish is None:
                self.text += self.stops.flush()
                self.finish = reason
        self.wake()

    def wake(self) -> None:
        # Only a reader that is waiting needs waking; once woken it takes all there is. Reading is_set from this
        # thread is racy only towards one extra wake-up, and skipping the rest spares the loop a self-pipe write
        # per stream per step.
        if self.loop is not None and self.event is not None and not self.event.is_set():
            try:
                self.loop.call_soon_threadsafe(self.event.set)
            except RuntimeError:  # the server's loop is closed: nobody is reading
                pass

    def take(self) -> tuple[str, list, str | None]:
        """Everything written since the last take (reader side): text, its tokens, and why it ended (None: not yet)."""
        with self.lock:
            text, self.sent = self.text[self.sent :], len(self.text)
            toks, self.tokens = self.tokens, []
            self.taken_end = self.finish is not None
            return text, toks, self.finish


def _libc_trim():
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
        return lambda: trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None


# A prompt read allocates tensors of (prompts x length x width), a different size every time; glibc keeps the
# freed pages in per-thread arenas, and a server reading prompts of all sizes grew by hundreds of MB over 5
# minutes (benchmarks/serve_load.py). Handing the free pages back after each read keeps RSS flat.
release_freed_memory = _libc_trim()


class PromptCache:
    """The state after each prompt read, by its ids: a prompt seen before is not read again, and one that extends
    a cached prompt (a story that grew, as co-writing sends it) is read from there, only its new part.

    A recurrent model's state is a few kilobytes however long the prompt (storyloom's cells all keep fixed-size
    state), so this costs little; the sequence kernel reads two pieces as it reads them joined (the Cell protocol),
    up to the last bits of float arithmetic. Used by the engine thread only.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_entries: int = 1024):
        self.entries: OrderedDict[bytes, tuple[torch.Tensor, tuple]] = OrderedDict()
        self.max_bytes, self.max_entries, self.bytes = max_bytes, max_entries, 0  # entries: a prefix search scans them all

    @staticmethod
    def key(ids: np.ndarray) -> bytes:
        return np.asarray(ids, dtype=np.int32).tobytes()

    @staticmethod
    def size(entry) -> int:
        logits, state = entry
        return logits.numel() * 4 + sum(t.numel() * t.element_size() for t in state)

    def find(self, key: bytes) -> tuple[int, torch.Tensor, tuple] | None:
        """(tokens covered, logits, state) of the longest cached prompt that `key` starts with, or None."""
        if key in self.entries:
            self.entries.move_to_end(key)
            return (len(key) // 4, *self.entries[key])
        best = max((k for k in self.entries if len(k) < len(key) and key.startswith(k)), key=len, default=None)
        if best is None:
            return None
        self.entries.move_to_end(best)
        return (len(best) // 4, *self.entries[best])

    def put(self, key: bytes, logits: torch.Tensor, state: tuple) -> None:
        if key in self.entries:
            return
        entry = (logits, state)
        self.entries[key] = entry
        self.bytes += self.size(entry)
        while (self.bytes > self.max_bytes or len(self.entries) > self.max_entries) and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= self.size(old)


class Engine:
    """One model's writing: a thread that advances every active stream by one token per batched step."""

    def __init__(self, name: str, writer: Writer, max_batch: int, metrics: "Metrics", threads: int = 0):
        self.name, self.w, self.max_batch, self.metrics = name, writer, max_batch, metrics
        self.threads = threads  # the CPU threads its steps run on (0: as the process has them)
        self.waiting: list[Stream] = []
        self.active: list[Stream] = []
        self.state = None  # (L, B, H) ...: the active streams' rows, in self.active's order
        self.cache = PromptCache()
        self.cv = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self.thread.start()

    def submit(self, streams: list[Stream]) -> None:
        with self.cv:
            self.waiting.extend(streams)
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # this thread's OpenMP team (create_app says why)
        while True:
            with self.cv:
                while not self.closed and not self.waiting and not self.active:
                    self.cv.wait()
                if self.closed:
                    for s in self.waiting + self.active:
                        s.end("stop")
                    return
                room = self.max_batch - len(self.active)
                joining, self.waiting = self.waiting[:room], self.waiting[room:]
            try:
                self._join(joining)
                self._step()
            except Exception as e:  # a bug must end these streams with an error, not hang their readers
                log.exception("engine %s failed", self.name)
                for s in self.active + joining:
                    s.end(f"error: {type(e).__name__}")
                self.active, self.state = [], None

    def _join(self, new: list[Stream]) -> None:
        """Read the new streams' prompts and add their rows to the batch.

        Choices of one prompt share one read; a cached prompt is not read again; the rest are read in batches of
        equal length (the part after a cached prefix, from that prefix's state), so a crowd arriving at once costs
        one sequence-kernel call per length.
        """
        fresh = [s for s in new if not s.cancelled]
        by_prompt: dict[bytes, list[Stream]] = {}
        for s in fresh:
            by_prompt.setdefault(PromptCache.key(s.prompt_ids), []).append(s)
        reads: dict[tuple[int, bool], list] = {}  # (tokens to read, from a cached prefix) -> [(key, ids, hit, streams)]
        for key, streams in by_prompt.items():
            ids, hit = streams[0].prompt_ids, self.cache.find(key)
            if hit is not None and hit[0] == len(ids):
                self.metrics.cache.labels("hit").inc()
                self._start(streams, hit[1], hit[2])
                continue
            self.metrics.cache.labels("prefix" if hit else "miss").inc()
            rest = ids[hit[0] :] if hit else ids
            reads.setdefault((len(rest), hit is not None), []).append((key, rest, hit, streams))
        for (_, prefixed), items in reads.items():
            state0 = tuple(torch.cat(ts, 1).to(self.w.device) for ts in zip(*(hit[2] for _, _, hit, _ in items))) if prefixed else None
            logits, state = self.w.decoder.read(np.stack([rest for _, rest, _, _ in items]), state0)  # (G, V)
            for k, (key, _, _, streams) in enumerate(items):
                # copies: a row's view would keep all G rows alive as long as the cache keeps the entry
                lg, st = logits[k : k + 1].clone(), tuple(t[:, k : k + 1].float().clone() for t in state)
                self.cache.put(key, lg, st)
                self._start(streams, lg, st)
        if reads:
            release_freed_memory()
        for s in fresh:
            if s.state is None:  # cancelled meanwhile, never read
                continue
            self.active.append(s)
            # a copy either way: s.state may be the prompt cache's own
            self.state = tuple(t.clone() for t in s.state) if self.state is None else tuple(
                torch.cat([a, b], 1) for a, b in zip(self.state, s.state))
            s.state = None
        self.metrics.active.labels(self.name).set(len(self.active))

    @staticmethod
    def _start(streams: list[Stream], logits: torch.Tensor, state: tuple) -> None:
        for s in streams:
            s.logits, s.state = logits, state

    ALONE = 16  # tokens a lone stream writes natively between looks at the queue: a newcomer waits about 2 ms

    def _step(self) -> None:
        """Draw one token for every active stream, drop the finished, and step the rest as one batch."""
        if not self.active or self._alone():
            return
        ids = torch.empty(len(self.active), dtype=torch.long)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(self.active):
            groups.setdefault((s.key, s.recent.shape[1]), []).append(i)
        for rows in groups.values():
            cfg, banned = self.active[rows[0]].cfg, self.active[rows[0]].banned
            logits = torch.cat([self.active[i].logits for i in rows])  # (G, V)
            recent = torch.cat([self.active[i].recent for i in rows]) if self.active[rows[0]].W else None
            got = draw(shape_logits(logits, cfg, recent, banned), cfg.temperature, [self.active[i].gen for i in rows])
            logp = torch.log_softmax(logits.float(), -1) if any(self.active[i].logprobs is not None for i in rows) else None
            for j, i in enumerate(rows):
                ids[i] = got[j]
                s = self.active[i]
                lp = top = None
                if logp is not None and s.logprobs is not None:
                    lp = float(logp[j, got[j]])
                    if s.logprobs:
                        v, k = logp[j].topk(s.logprobs)
                        top = {self.w.tokenizer.decode([t]): float(x) for x, t in zip(v.tolist(), k.tolist())}
                s.add(int(got[j]), lp, top)
                if s.W:
                    s.recent = torch.cat([s.recent, got[j].view(1, 1)], 1)[:, -s.W :]
        self.metrics.chars.labels(self.name).inc(len(self.active))
        self.metrics.batch.observe(len(self.active))
        keep = [i for i, s in enumerate(self.active) if s.finish is None and not s.cancelled]
        if len(keep) < len(self.active):
            for i, s in enumerate(self.active):
                if i not in keep and s.finish is None:
                    s.end("cancelled")
            self.active = [self.active[i] for i in keep]
            idx = torch.tensor(keep, dtype=torch.long)
            self.state = tuple(t[:, idx.to(t.device)] for t in self.state) if keep else None
            ids = ids[idx]
            self.metrics.active.labels(self.name).set(len(self.active))
        if not self.active:
            return
        logits, self.state = self.w.decoder.step(ids, self.state)  # (B, V)
        for i, s in enumerate(self.active):
            s.logits = logits[i : i + 1]

    def _alone(self) -> bool:
        """A lone stream, with nobody waiting, writes up to ALONE tokens through native.py's loop (the tokens the
        steps below would draw for it, 2.5-3x as fast); False where that loop does not cover it."""
        s = self.active[0]
        if len(self.active) > 1 or self.waiting or s.logprobs is not None or s.cancelled or not self.w.decoder.native:
            return False
        fast = native.loop(self.w.model, self.w.decoder.decode, self.w.device, s.cfg, s.banned, 1)
        if fast is None:
            return False
        k = min(self.ALONE if s.written else 1, s.length - s.written)  # the first token at once, as decoding.sample
        toks, logits, self.state, s.recent = fast(s.logits, self.state, s.recent, k, s.gen)
        s.logits = logits
        added = 0
        for t in toks:  # past a stop string the rest are dropped, as a stream that ends drops its row
            s.add(t, None, None)
            added += 1
            if s.finish is not None:
                break
        self.metrics.chars.labels(self.name).inc(added)
        for _ in range(added):  # a step of one stream per token, as the batched steps count them
            self.metrics.batch.observe(1)
        if s.finish is not None or s.cancelled:
            if s.finish is None:
                s.end("cancelled")
            self.active, self.state = [], None
            self.metrics.active.labels(self.name).set(0)
        return True


# -- metrics -------------------------------------------------------------------
class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("storyloom_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("storyloom_request_seconds", "time to the whole response, by route", ["route"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.first = Histogram("storyloom_first_char_seconds", "time from a completion request to its first character",
                               registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5))
        self.chars = Counter("storyloom_tokens_written", "tokens (characters at char level) written, by model", ["model"],
                             registry=r)
        self.active = Gauge("storyloom_active_streams", "streams being written, by model", ["model"], registry=r)
        self.streams = Gauge("storyloom_open_sse_streams", "server-sent event responses open", registry=r)
        self.cache = Counter("storyloom_prompt_reads", "prompts by how they were read: hit (cached), prefix (only the part "
                             "after a cached prompt), miss (whole)", ["result"], registry=r)
        self.batch = Histogram("storyloom_batch_size", "streams advanced per decoding step", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


# -- the app -------------------------------------------------------------------
def _names(runs) -> dict[str, str]:
    """{name: run path} from a mapping, or from paths / NAME=PATH strings (a run's name is its directory's)."""
    if isinstance(runs, Mapping):
        return {str(k): str(v) for k, v in runs.items()}
    out: dict[str, str] = {}
    for r in runs:
        name, _, path = str(r).rpartition("=") if "=" in str(r) else (Path(str(r).rstrip("/")).name, "", str(r))
        if not name:
            raise UserError(f"{r}: give NAME=RUN with a name before the '='")
        if name in out:
            raise UserError(f"two runs are named {name!r}; name one with NAME=RUN")
        out[name] = path
    if not out:
        raise UserError("give at least one run to serve: storyloom serve RUN")
    return out


def _facts(name: str, w: Writer) -> dict:
    info, rows = w.run.info(), w.run.metrics()
    vals = [(r["step"], round(r["val_bpc"], 4)) for r in rows if "val_bpc" in r]
    return {"id": name, "object": "model", "created": int(w.run.path.stat().st_mtime), "owned_by": "storyloom",
            "storyloom": {"preset": w.config.preset, "params": info.get("params"), "level": w.tokenizer.kind,
                          "vocab": len(w.tokenizer), "val_bpc": min((v for _, v in vals), default=None), "curve": vals,
                          "hidden": w.config.model.hidden, "layers": w.config.model.layers, "cell": w.config.model.cell,
                          "device": str(w.device)}}


def create_app(runs, cfg: ServeConfig | None = None, load: LoadConfig | None = None, unknown: str = DataConfig.unknown) -> FastAPI:
    """The ASGI app serving `runs` ({name: path}, or paths / NAME=PATH strings)."""
    cfg, load = cfg or ServeConfig(), load or LoadConfig()
    if unknown not in ("error", "replace"):
        raise UserError(f"--unknown must be error or replace, got {unknown!r}")
    metrics = Metrics()
    # Only the engines' threads step with several CPU threads. Once a process holds more OpenMP threads than
    # cores, libgomp stops spinning between parallel regions and each then waits a wake-up of tens of
    # microseconds; a second multi-threaded team beside an engine's (the thread that loaded the runs, a request
    # thread scoring a text) does that. With the writers loaded on one thread and requests read on one each,
    # batched writing ran 1.5x and a lone stream 2-4x as fast (benchmarks/README.md, "Serving").
    names = _names(runs)
    threads = load.threads or max(1, physical_cores() // len(names))  # the cores shared among the engines
    writers = {name: Writer(path, load.which, load.device, load.precision, 1, load.decode_precision)
               for name, path in names.items()}
    engines = {name: Engine(name, w, cfg.max_batch, metrics, threads) for name, w in writers.items()}
    helpers = {name: Decoder(w.model, w.device, w.decoder.precision, graphs=False, decode=w.decode) for name, w in writers.items()}
    facts = {name: _facts(name, w) for name, w in writers.items()}
    key = cfg.api_key.encode()

    @asynccontextmanager
    async def lifespan(app):
        yield
        for e in engines.values():
            e.close()

    app = FastAPI(title="storyloom", docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.engines, app.state.writers, app.state.metrics, app.state.config = engines, writers, metrics, cfg
    app.add_middleware(Edge, key=key, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(error_body(e.message, e.param, e.kind), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid" or (not loc and "JSON" in str(first.get("msg", ""))):
            return JSONResponse(error_body("the body is not valid JSON", None, "invalid_request_error"), status_code=400)
        param = loc[0] if loc else None
        msg = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request"))
        return JSONResponse(error_body(msg, param, "invalid_request_error"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), None, "invalid_request_error"), status_code=e.status_code)

    def model_of(name: str | None) -> str:
        if name is None:
            if len(writers) == 1:
                return next(iter(writers))
            raise ApiError(400, f"model: required; one of {', '.join(writers)}", "model")
        if name not in writers:
            raise ApiError(404, f"model {name!r} is not served here; GET /v1/models lists {', '.join(writers)}", "model",
                           "not_found_error")
        return name

    def encode(w: Writer, text: str, what: str, param: str) -> np.ndarray:
        if len(text) > cfg.max_prompt_chars:
            raise ApiError(400, f"{param}: {len(text)} characters, over this server's limit of {cfg.max_prompt_chars} "
                           "(--max-prompt-chars)", param)
        try:
            return w.prompt_ids(text, unknown, what)
        except UserError as e:
            raise ApiError(400, f"{param}: {e}", param) from None

    # -- routes ------------------------------------------------------------------
    @app.get("/health")
    def health():
        return {"status": "ok", "models": list(writers)}

    @app.get("/metrics")
    def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": list(facts.values())}

    @app.get("/v1/models/{name}")
    def one_model(name: str):
        return facts[model_of(name)]

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        name = model_of(body.model)
        w, engine = writers[name], engines[name]
        sc = body.sample_config()
        if body.max_tokens > cfg.max_tokens:
            raise ApiError(400, f"max_tokens: {body.max_tokens}, over this server's limit of {cfg.max_tokens} (--max-tokens)",
                           "max_tokens")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) * body.n > cfg.max_batch:
            raise ApiError(400, f"n: {len(prompts)} prompt(s) x n={body.n} streams, over this server's batch of "
                           f"{cfg.max_batch} (--max-batch)", "n")
        try:
            banned = w.banned(sc.ban, unknown)
        except UserError as e:
            raise ApiError(400, f"ban: {e}", "ban") from None
        seed = draw_seed(body.seed)
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        streams: list[Stream] = []
        for p in prompts:
            ids = encode(w, p, "the prompt", "prompt")
            streams += [Stream(w, ids, sc, banned, seed + i, body.max_tokens, body.logprobs, loop, event) for i in range(body.n)]
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        usage_prompt = sum(len(s.prompt_ids) for s in streams[:: body.n])
        if body.max_tokens == 0:
            for s in streams:
                s.end("length")
        else:
            engine.submit(streams)
        head = {"id": cid, "object": "text_completion", "created": created, "model": name}

        def choice(i: int, text: str, toks: list, finish: str | None) -> dict:
            c = {"index": i, "text": text, "finish_reason": finish if finish in ("stop", "length", None) else "stop",
                 "logprobs": None, "seed": streams[i].seed}
            if body.logprobs is not None:
                c["logprobs"] = {"tokens": [t for t, _, _ in toks], "token_logprobs": [lp for _, lp, _ in toks],
                                 "top_logprobs": [top for _, _, top in toks] if body.logprobs else None}
            return c

        async def written():
            """Wait until some stream of this request wrote or ended since the last take."""
            event.clear()
            if not any(s.text[s.sent :] or (s.finish and s.sent == len(s.text) and not s.taken_end) for s in streams):
                try:
                    await asyncio.wait_for(event.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass

        if body.stream:
            async def events():
                metrics.streams.inc()
                left = set(range(len(streams)))
                try:
                    while left:
                        for i in sorted(left):
                            s = streams[i]
                            text, toks, finish = s.take()
                            if text or toks or finish:
                                request.state.chars += len(text)
                                if s.first_at is not None and text and not s.timed:
                                    s.timed = True
                                    metrics.first.observe(s.first_at - s.started)
                                yield f"data: {json.dumps({**head, 'choices': [choice(i, text, toks, finish)]})}\n\n"
                            if finish:
                                left.discard(i)
                        if left:
                            await written()
                    yield "data: [DONE]\n\n"
                finally:  # done, or the client went away: free its streams at once
                    for s in streams:
                        s.cancelled = True
                    metrics.streams.dec()

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        texts = [""] * len(streams)
        toks_all: list[list] = [[] for _ in streams]
        finish: list[str | None] = [None] * len(streams)
        try:
            while any(f is None for f in finish):
                for i, s in enumerate(streams):
                    t, k, f = s.take()
                    texts[i] += t
                    toks_all[i] += k
                    finish[i] = f
                if any(f is None for f in finish):
                    if await request.is_disconnected():
                        break
                    await written()
        finally:
            for s in streams:
                s.cancelled = True
        request.state.chars = sum(map(len, texts))
        for s in streams:
            if s.first_at is not None:
                metrics.first.observe(s.first_at - s.started)
        done = sum(s.written for s in streams)
        return {**head, "choices": [choice(i, texts[i], toks_all[i], finish[i]) for i in range(len(streams))],
                "usage": {"prompt_tokens": usage_prompt, "completion_tokens": done, "total_tokens": usage_prompt + done}}

    @app.post("/v1/score")
    def score(body: ScoreRequest, request: Request):
        torch.set_num_threads(1)  # a request thread: one CPU thread, so the engines' teams keep spinning (above)
        name = model_of(body.model)
        w = writers[name]
        if len(body.text) > cfg.max_prompt_chars:
            raise ApiError(400, f"text: {len(body.text)} characters, over this server's limit of {cfg.max_prompt_chars} "
                           "(--max-prompt-chars)", "text")
        try:
            r = w.score(body.text, unknown)
        except UserError as e:
            raise ApiError(400, f"text: {e}", "text") from None
        request.state.chars = len(body.text)
        return {"model": name, **r}

    @app.post("/v1/next")
    def next_(body: NextRequest, request: Request):
        torch.set_num_threads(1)  # as /v1/score
        name = model_of(body.model)
        w, dec = writers[name], helpers[name]
        ids = encode(w, body.prompt, "the prompt", "prompt")
        logits, state = dec.read(ids)
        if body.unit == "word" and not w.tokenizer.words_are_tokens:
            boundary = set(w.tokenizer.boundaries())
            found = [(w.tokenizer.decode(i), float(np.exp(lp))) for i, lp in next_words(dec, logits, state, boundary, body.n)]
        else:
            found = w.top_tokens(logits, body.n)
        request.state.chars = len(body.prompt)
        return {"model": name, "unit": body.unit, "next": [{"text": t, "probability": p} for t, p in found]}

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}")
    def static(name: str):
        # Only the files shipped in the package, by exact name: no path a client names is ever opened.
        if name not in SHIPPED:
            raise ApiError(404, f"no static file {name!r}", None, "not_found_error")
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return app


ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/score", "/v1/next")


class Edge:
    """Pure ASGI middleware (it sees a streamed body to its end, or the client leaving): the API key on /v1 routes,
    then one log line and the metrics per request."""

    def __init__(self, app, key: bytes, metrics: Metrics):
        self.app, self.key, self.metrics = app, key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, path = time.perf_counter(), scope["path"]
        route = path if path in ROUTES else "/v1/models" if path.startswith("/v1/models/") else "other"
        status = [500]
        scope.setdefault("state", {})["chars"] = 0

        async def sent(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            if self.key and path.startswith("/v1/") and not self._authorised(scope):
                body = error_body("missing or wrong API key: send Authorization: Bearer KEY", None, "authentication_error")
                await JSONResponse(body, status_code=401)(scope, receive, sent)
            else:
                await self.app(scope, receive, sent)
        finally:
            ms = (time.perf_counter() - t) * 1000
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(ms / 1000)
            log.info("%s %s %d %.1f ms %d chars", scope["method"], path, status[0], ms, scope["state"].get("chars", 0))

    def _authorised(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        token = given[7:] if given[:7].lower() == b"bearer " else b""
        return hmac.compare_digest(token, self.key)
SHIPPED = frozenset(p.name for p in STATIC.glob("*") if p.is_file()) if STATIC.exists() else frozenset()


def serve(runs, cfg: ServeConfig | None = None, load: LoadConfig | None = None, unknown: str = DataConfig.unknown) -> None:
    """Run the server until SIGINT or SIGTERM (then running streams get `cfg.grace` seconds to finish)."""
    import sys

    import uvicorn

    _Server = _server_class()
    cfg = cfg or ServeConfig()
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"storyloom: warning: listening on {cfg.host} without --api-key: anyone who can reach this port can use "
              "the models", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    app = create_app(runs, cfg, load, unknown)
    print(f"storyloom: serving {', '.join(app.state.writers)} on http://{cfg.host}:{cfg.port}/", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=cfg.grace)
    _Server(config).run()
    print("storyloom: stopped", file=sys.stderr)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self):
            # uvicorn raises SIGINT/SIGTERM again once it has shut down, so the process ends killed by the signal;
            # a stop that was asked for and carried out is a clean exit: 0.
            with stop_signals(self.handle_exit):
                yield

    return Server
