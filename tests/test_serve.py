"""storyloom serve: the OpenAI-compatible API (checked with the official `openai` client and plain HTTP), storyloom's
own routes, many writers at once, bad requests, the key, SIGTERM, and the web page in a real headless Chromium."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storyloom
import storyloom.serve
from storyloom.config import ServeConfig
from storyloom.errors import UserError
from storyloom.serve import create_app

from conftest import TINY, free_port


@pytest.fixture(scope="module")
def run(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("serve")
    (d / "s.txt").write_text(sonnets)
    return storyloom.train([str(d / "s.txt")], out=d / "sonnets", steps=40, progress=False,
                           **{**TINY, "hidden": 48, "batch_size": 8, "seq_len": 32, "lr": 1e-2})


class Server:
    """The app on a loopback port, in this process (a thread), as uvicorn runs it."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)
        self.app = app

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(run):
    s = Server(create_app([str(run)], ServeConfig(max_batch=16, max_tokens=2000, max_prompt_chars=5000)))
    s.shot = run.parent / "page.png"
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_each_run_with_its_facts(client, run):
    (m,) = client.models.list().data
    assert m.id == "sonnets" and m.object == "model"
    facts = m.model_extra["storyloom"]
    assert facts["level"] == "char" and facts["hidden"] == 48 and facts["params"] > 0 and len(facts["curve"]) >= 1


def test_a_lone_request_writes_what_storyloom_generate_writes(client, run):
    m = storyloom.load(run)
    want = m.generate("Shall I compare", length=60, seed=11, temperature=0.9, top_p=0.95)
    r = client.completions.create(model="sonnets", prompt="Shall I compare", max_tokens=60, seed=11, temperature=0.9, top_p=0.95)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    assert r.object == "text_completion" and r.model == "sonnets" and r.id.startswith("cmpl-")
    assert r.usage.completion_tokens == 60 and r.usage.prompt_tokens == len("Shall I compare")
    streamed = client.completions.create(model="sonnets", prompt="Shall I compare", max_tokens=60, seed=11, temperature=0.9,
                                         top_p=0.95, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == want and chunks[-1].choices[0].finish_reason == "length"
    # and the command line's own output, seed for seed
    cli = subprocess.run([sys.executable, "-m", "storyloom", "generate", str(run), "--prompt", "Shall I compare", "--length",
                          "60", "--seed", "11", "--temperature", "0.9", "--top-p", "0.95"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert cli.stdout.rstrip("\n") == "Shall I compare" + want.rstrip("\n")


def test_n_samples_and_stop_strings_match_the_python_api(client, run):
    m = storyloom.load(run)
    want = m.samples("The", num=3, length=40, seed=5, stop=("e ",))
    r = client.completions.create(model="sonnets", prompt="The", max_tokens=40, n=3, seed=5, stop="e ")
    assert [c.text for c in r.choices] == [s["text"] for s in want]
    assert all(c.finish_reason == ("stop" if len(c.text) < 40 else "length") for c in r.choices)
    assert [c.index for c in r.choices] == [0, 1, 2]
    two = client.completions.create(model="sonnets", prompt=["a", "b"], max_tokens=5, n=2, seed=1)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]


def test_a_prompt_read_before_is_not_read_again_and_a_longer_one_reads_only_its_new_part(run):
    from storyloom.serve import Engine, Metrics, Stream

    m = storyloom.load(run)
    engine = Engine("s", m, 8, Metrics())
    try:
        def first_logits(prompt):
            s = Stream(m, m.encode(prompt), storyloom.config.SampleConfig(), (), 1, 1)
            engine.submit([s])
            deadline = time.time() + 30
            while s.finish is None and time.time() < deadline:
                time.sleep(0.005)
            return s

        story = "Shall I compare thee to a summer's day?\n"
        a = first_logits(story)
        b = first_logits(story)  # cached: the same state, so the same draw
        c = first_logits(story + "Thou art more lovely")  # read from the cached story's state
        reads = {s.labels["result"]: s.value for s in engine.metrics.cache.collect()[0].samples if s.name.endswith("_total")}
        assert reads == {"miss": 1, "hit": 1, "prefix": 1}
        assert a.text == b.text
        _, whole, _ = m.read(story + "Thou art more lovely")
        key = storyloom.serve.PromptCache.key(m.encode(story + "Thou art more lovely"))
        torch.testing.assert_close(engine.cache.entries[key][0], whole, rtol=1e-5, atol=1e-5)
        for logits, state in engine.cache.entries.values():  # copies, not views keeping a whole read's tensors alive
            assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in (logits, *state))
        assert c.finish == "length"
    finally:
        engine.close()


@pytest.mark.parametrize("settings", [dict(temperature=0.9), dict(temperature=1.1, top_k=9, stop=("e ",)),
                                      dict(temperature=0.7, repetition_penalty=1.3)])
def test_a_lone_stream_is_written_natively_and_the_same(run, settings, monkeypatch):
    from storyloom import native
    from storyloom.serve import Engine, Metrics, Stream

    calls = []
    call = native.Loop.__call__
    monkeypatch.setattr(native.Loop, "__call__", lambda self, *a: calls.append(a[3]) or call(self, *a))
    m = storyloom.load(run)
    cfg = storyloom.config.SampleConfig(**settings)
    assert native.loop(m.model, m.decoder.decode, m.device, cfg, (), 1) is not None  # so the engine takes it

    def lone(use_native: bool, length: int = 3 * Engine.ALONE + 5) -> Stream:
        m.decoder.native = use_native
        engine = Engine("s", m, 8, Metrics())
        try:
            s = Stream(m, m.encode("Shall I"), cfg, (), 7, length)
            engine.submit([s])
            deadline = time.time() + 30
            while (s.finish is None or engine.active or engine.state is not None) and time.time() < deadline:
                # the engine thread drops its row just after it sets `finish`
                time.sleep(0.005)
            assert s.finish is not None and not engine.active and engine.state is None  # its row is gone once it ends
            return s
        finally:
            engine.close()
            m.decoder.native = True

    fast = lone(True)
    assert calls and all(n <= Engine.ALONE for n in calls)  # written natively, a chunk at a time
    calls.clear()
    slow = lone(False)
    assert not calls and fast.text == slow.text and fast.finish == slow.finish
    assert fast.text == m.generate("Shall I", 3 * Engine.ALONE + 5, seed=7, sampling=cfg)


def test_sse_framing_is_data_lines_closed_by_done(server):
    body = {"model": "sonnets", "prompt": "When", "max_tokens": 30, "stream": True, "seed": 2, "logprobs": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    for c in chunks:
        assert set(c) >= {"id", "object", "created", "model", "choices"} and c["object"] == "text_completion"
        (ch,) = c["choices"]
        assert set(ch) >= {"index", "text", "finish_reason", "logprobs"}
        assert len(ch["logprobs"]["tokens"]) == len(ch["logprobs"]["token_logprobs"])
        assert all(lp <= 0 for lp in ch["logprobs"]["token_logprobs"])
    assert len({c["id"] for c in chunks}) == 1 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(len(c["choices"][0]["text"]) for c in chunks) == 30


def test_score_and_next_are_what_the_python_api_says(server, run, sonnets):
    m = storyloom.load(run)
    text = sonnets[:3000]
    r = httpx.post(server.url + "/v1/score", json={"text": text}).json()
    want = m.score(text)
    assert r["bpc"] == pytest.approx(want["bpc"], abs=1e-9) and r["perplexity"] == pytest.approx(want["perplexity"])
    nxt = httpx.post(server.url + "/v1/next", json={"prompt": "Shall I compare th", "n": 4}).json()
    assert [(x["text"], pytest.approx(x["probability"])) for x in nxt["next"]] == m.next_tokens("Shall I compare th", 4)
    words = httpx.post(server.url + "/v1/next", json={"prompt": "Shall I compare ", "n": 3, "unit": "word"}).json()
    assert len(words["next"]) == 3 and all(0 < w["probability"] <= 1 for w in words["next"])


def test_many_writers_are_written_together(server):
    async def one(c, i):
        body = {"prompt": "To be", "max_tokens": 200, "stream": True, "seed": i}
        text = ""
        async with c.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["text"]
        return text

    async def all_of_them():
        async with httpx.AsyncClient() as c:
            return await asyncio.gather(*(one(c, i) for i in range(12)))

    import asyncio

    texts = asyncio.run(all_of_them())
    assert all(len(t) == 200 for t in texts) and len(set(texts)) == 12
    batch = server.app.state.metrics.batch.collect()[0].samples
    total = next(s.value for s in batch if s.name.endswith("_sum"))
    count = next(s.value for s in batch if s.name.endswith("_count"))
    assert total / count > 2  # steps advanced several streams at once
    metrics = httpx.get(server.url + "/metrics").text
    assert 'storyloom_requests_total{route="/v1/completions",status="200"}' in metrics
    assert "storyloom_first_char_seconds_bucket" in metrics and "storyloom_active_streams" in metrics


def test_a_client_that_leaves_frees_its_stream(server, monkeypatch):
    engine = server.app.state.engines["sonnets"]
    # The engine waits after each token until the client has left: unheld, a loaded machine could let it write all
    # 2000 tokens before the client reads the first, and the stream would end by its length, not by the leaving.
    left, add = threading.Event(), storyloom.serve.Stream.add
    monkeypatch.setattr(storyloom.serve.Stream, "add", lambda self, *a: add(self, *a) or left.wait(10))
    with httpx.stream("POST", server.url + "/v1/completions", json={"prompt": "O", "max_tokens": 2000, "stream": True},
                      timeout=30) as r:
        next(r.iter_lines())
        assert len(engine.active) == 1
    left.set()
    deadline = time.time() + 10
    while engine.active and time.time() < deadline:
        time.sleep(0.01)
    assert not engine.active


def test_a_reader_that_does_not_read_stalls_nobody(server):
    """One client opens a long stream and never reads it; another request still finishes at once."""
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        body = json.dumps({"prompt": "O", "max_tokens": 2000, "stream": True}).encode()
        slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        engine = server.app.state.engines["sonnets"]
        deadline = time.time() + 10
        while not engine.active and time.time() < deadline:
            time.sleep(0.01)
        t = time.time()
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "When", "max_tokens": 100, "seed": 1}, timeout=30)
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 100 and time.time() - t < 10


BAD = [  # (body, status, the field the error names)
    ({"prompt": "x", "model": "nope"}, 404, "model"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 2}, 400, "top_p"),
    ({"prompt": "x", "top_k": 0}, 400, "top_k"),
    ({"prompt": "x", "max_tokens": 2001}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": "x" * 5001}, 400, "prompt"),
    ({"prompt": "x", "n": 17}, 400, "n"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "\u4e2d\u6587"}, 400, "prompt"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "x", "seed": -3}, 400, "seed"),
    ({"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"prompt": "x", "logprobs": 9}, 400, "logprobs"),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_a_bad_request_is_a_4xx_naming_the_field(server, body, status, param):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"].endswith("_error")


def test_malformed_json_and_other_routes_answer_4xx(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/score", json={}).json()["error"]["param"] == "text"
    assert httpx.post(server.url + "/v1/score", json={"text": "x" * 5001}).status_code == 400
    assert httpx.post(server.url + "/v1/next", json={"prompt": "a", "n": 500}).json()["error"]["param"] == "n"
    assert httpx.get(server.url + "/static/..%2Fserve.py").status_code == 404
    assert httpx.get(server.url + "/static/app.js").status_code == 200
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "models": ["sonnets"]}


def test_unknown_characters_are_replaced_when_the_server_says_so(run):
    from fastapi.testclient import TestClient

    with TestClient(create_app({"s": str(run)}, unknown="replace")) as c:
        r = c.post("/v1/completions", json={"prompt": "\u4e2d", "max_tokens": 3, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 3


def test_with_a_key_every_v1_route_needs_it(run):
    from fastapi.testclient import TestClient

    with TestClient(create_app([str(run)], ServeConfig(api_key="s3cret"))) as c:
        for method, path in (("get", "/v1/models"), ("post", "/v1/completions"), ("post", "/v1/score"), ("post", "/v1/next")):
            assert getattr(c, method)(path).status_code == 401
            assert getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models").json()["error"]["type"] == "authentication_error"


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "logprobs", "text",
          "unit", "ban", "repetition_penalty", "echo"]
bodies = st.one_of(json_values, st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))


@pytest.fixture(scope="module")
def test_client(run):
    from fastapi.testclient import TestClient

    with TestClient(create_app([str(run)], ServeConfig(max_tokens=50, max_batch=8, max_prompt_chars=500))) as c:
        yield c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(["/v1/completions", "/v1/score", "/v1/next"]), body=bodies)
def test_fuzz_random_json_bodies_never_get_a_5xx(test_client, route, body):
    # json.dumps writes NaN and Infinity as Python's json.loads (and so the server) reads them
    r = test_client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, (route, body, r.text)
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert test_client.get("/health").status_code == 200


def test_names_of_runs_and_their_errors(run):
    from storyloom.serve import _names

    assert _names([str(run), f"other={run}"]) == {"sonnets": str(run), "other": str(run)}
    with pytest.raises(UserError, match="two runs are named"):
        _names([str(run), str(run)])
    with pytest.raises(UserError, match="at least one run"):
        _names([])


@pytest.mark.parametrize("threads", [0, 3])
def test_only_the_engines_step_on_several_threads(run, threads, monkeypatch):
    import storyloom.serve as serve
    from storyloom.config import LoadConfig

    calls = []  # (thread name, count) of every set_num_threads
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append((threading.current_thread().name, n)), real(n)))
    monkeypatch.setattr(serve, "physical_cores", lambda: 4)
    real(2)
    app = create_app({"a": str(run), "b": str(run)}, load=LoadConfig(threads=threads))
    try:
        assert torch.get_num_threads() == 1  # the runs were loaded on one thread
        deadline = time.time() + 10
        while {t for t, _ in calls} < {"engine-a", "engine-b"} and time.time() < deadline:
            time.sleep(0.01)
        # each engine's thread: the cores shared among the engines, or --threads
        assert {(t, n) for t, n in calls if t.startswith("engine")} == {("engine-a", threads or 2), ("engine-b", threads or 2)}
        from fastapi.testclient import TestClient

        client = TestClient(app)
        assert client.post("/v1/score", json={"model": "a", "text": "Shall I compare thee"}).status_code == 200
        assert calls[-1][1] == 1 and not calls[-1][0].startswith("engine")  # a request thread: one
    finally:
        for e in app.state.engines.values():
            e.close()
        real(1)


def test_sigterm_lets_running_streams_finish_then_exits_0(run):
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "storyloom", "serve", str(run), "--host", "0.0.0.0", "--port", str(port),
                          "--threads", "1"], stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        got = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions",
                          json={"prompt": "O", "max_tokens": 1500, "stream": True, "seed": 3}, timeout=60) as r:
            lines = r.iter_lines()
            got.append(next(lines))
            p.send_signal(signal.SIGTERM)
            got += [x for x in lines if x]
        assert got[-1] == "data: [DONE]"
        text = "".join(json.loads(x[6:])["choices"][0]["text"] for x in got if x.startswith("data: {"))
        assert len(text) == 1500
        assert p.wait(timeout=30) == 0
        err = p.stderr.read()
        assert "warning: listening on 0.0.0.0 without --api-key" in err
        assert "POST /v1/completions 200" in err  # the request's log line
    finally:
        p.kill()


def test_the_page_writes_in_a_real_browser(server):
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert os.path.exists(chromium), f"the web page's test needs Chromium at {chromium}: make test installs it"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                     "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            assert "val bpc" in page.inner_text("#facts")
            page.fill("#prompt", "Shall I compare thee")
            page.fill("#length", "120")
            page.click("#write")
            page.wait_for_function("document.querySelector('#output').innerText.length >= 120", timeout=30000)
            first = page.inner_text("#output")
            # a new temperature, with colours by confidence: text arrives again, each character tinted
            page.eval_on_selector("#temperature", "e => { e.value = 0.3; e.dispatchEvent(new Event('input')); }")
            assert page.inner_text("#temperature-value") == "0.3"
            page.check("#confidence")
            page.click("#write")
            page.wait_for_function("document.querySelectorAll('#output span[title]').length >= 120", timeout=30000)
            assert page.inner_text("#output") != first
            # co-writing: propose, accept, propose again
            page.select_option("#mode", "cowrite")
            page.fill("#prompt", "When in disgrace")
            page.fill("#length", "40")
            page.click("#write")
            page.wait_for_selector("#accept:not([disabled])", timeout=30000)
            first_proposal = page.input_value("#edit")
            assert len(first_proposal) == 40
            page.click("#another")  # ask for another: it replaces the first
            page.wait_for_function(f"document.querySelector('#edit').value !== {json.dumps(first_proposal)}", timeout=30000)
            page.wait_for_selector("#accept:not([disabled])", timeout=30000)
            proposal = page.input_value("#edit")
            page.click("#accept")
            assert page.input_value("#prompt") == "When in disgrace" + proposal
            page.click("#write")  # propose a continuation of the grown story
            page.wait_for_selector("#accept:not([disabled])", timeout=30000)
            assert page.inner_text("#output").startswith("When in disgrace" + proposal)
            page.screenshot(path=os.environ.get("STORYLOOM_SCREENSHOT", str(server.shot)), full_page=True)
        finally:
            browser.close()
