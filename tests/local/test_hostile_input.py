"""Hostile and broken input: every bad request is an API-shaped 4xx, harms no other request,
keeps its connection, and never reads or writes outside the data dir."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from support.vllm_errors import error_message

from wandb_serverless.local.engine import GenerationRequest, SamplingParams, wait_idle
from wandb_serverless.local.engine_api import OutputConstraint

HELLO = [{"role": "user", "content": "Hello"}]


class Connection:
    """One keep-alive HTTP/1.1 connection with raw bodies (NaN, lone surrogates, 2**70)."""

    def __init__(self, backend) -> None:
        url = urlsplit(backend.base_url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        self.prefix = url.path
        self.headers = {
            "Authorization": f"Bearer {backend.api_key}",
            "Content-Type": "application/json",
        }

    def send(self, method: str, path: str, body: str | None = None) -> tuple[int, dict, bool]:
        self.conn.request(method, self.prefix + path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        raw = response.read()
        assert response.getheader("content-type", "").startswith("application/json"), raw[:200]
        return response.status, json.loads(raw), not response.will_close

    def close(self) -> None:
        self.conn.close()


def chat_body(**fields) -> str:
    return json.dumps({"messages": HELLO, "max_tokens": 2, **fields})


BAD_CHAT_BODIES = {
    "temperature NaN": chat_body(temperature=math.nan),
    "temperature Infinity": chat_body(temperature=math.inf),
    "top_p NaN": chat_body(top_p=math.nan),
    "response_format json_schema string": chat_body(
        response_format={"type": "json_schema", "json_schema": "abc"}
    ),
    "structured_outputs json_schema": chat_body(structured_outputs={"json_schema": "abc"}),
    "structured_outputs regex int": chat_body(structured_outputs={"regex": 123}),
    "structured_outputs choice int": chat_body(structured_outputs={"choice": 5}),
    "structured_outputs json broken": chat_body(structured_outputs={"json": "not json{"}),
    "structured_outputs grammar int": chat_body(structured_outputs={"grammar": 42}),
    "structured_outputs json schema list": chat_body(structured_outputs={"json": [1, 2]}),
    "lone surrogate": '{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
    "step 2**70": chat_body(model=f"wandb-artifact:///local/p/m:step{2**70}"),
    "chat_template_kwargs tokenize": chat_body(chat_template_kwargs={"tokenize": True}),
    "seed 2**70": chat_body(seed=2**70),
    "logit_bias unknown token": chat_body(logit_bias={"999999": 5}),
    "logit_bias infinite": chat_body(logit_bias={"1": math.inf}),
    "logit_bias huge": chat_body(logit_bias={"1": 1e6}),
    "stop_token_ids out of vocabulary": chat_body(stop_token_ids=[1e9]),
    "stop_token_ids negative": chat_body(stop_token_ids=[-1]),
    "max_tokens 2**70": chat_body(max_tokens=2**70),
    "top_k 2**70": chat_body(top_k=2**70),
    "role a list": json.dumps({"messages": [{"role": ["user"], "content": "x"}]}),
    "message a string": json.dumps({"messages": ["hello"]}),
}


@pytest.mark.parametrize("name", sorted(BAD_CHAT_BODIES))
def test_bad_chat_input_is_a_json_4xx_and_the_connection_lives_on(backend, name):
    conn = Connection(backend)
    try:
        status, body, kept = conn.send("POST", "/chat/completions", BAD_CHAT_BODIES[name])
        assert 400 <= status < 500, (status, body)
        assert error_message(body)
        assert kept, "the server closed the keep-alive connection after a bad request"
        status, body, _ = conn.send("POST", "/chat/completions", chat_body())
        assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    finally:
        conn.close()


def test_bad_training_api_input_is_a_json_4xx(backend, oai):
    model = oai.post(
        "/preview/models",
        body={"project": "hostile", "name": "nan-model", "base_model": backend.model_id},
        cast_to=object,
    )
    conn = Connection(backend)
    try:
        trajectory = {"messages_and_choices": HELLO, "reward": math.nan}
        nan_log = json.dumps(
            {"split": "val", "trajectory_groups": [{"trajectories": [trajectory]}]}
        )
        for method, path, body in [
            ("POST", f"/preview/models/{model['id']}/log", nan_log),
            ("DELETE", f"/preview/models/{model['id']}/checkpoints", json.dumps({"steps": [2**70]})),
            ("POST", "/preview/training-jobs", json.dumps({
                "model_id": model["id"],
                "trajectory_groups": [{"trajectories": [trajectory, {**trajectory, "reward": 1}]}],
            })),
        ]:  # fmt: skip
            status, payload, kept = conn.send(method, path, body)
            assert status == 422 and payload["detail"][0]["msg"], (path, status, payload)
            assert kept
        good = {"messages_and_choices": HELLO, "reward": 1.0}
        for method, path, body in [  # lone surrogates: valid JSON, not storable text
            ("POST", "/preview/training-jobs", '{"model_id": "\\udb7e\\udd2cH", '
             '"trajectory_groups": [{"trajectories": [' + json.dumps(good) + "]}]}"),
            ("POST", "/preview/models", '{"project": "p", "name": "n", "entity": "\\ud800", '
             f'"base_model": "{backend.model_id}"}}'),
            ("GET", "/preview/training-jobs/%ED%A0%80", None),
            ("POST", "/preview/training-jobs", json.dumps({  # found by the schemathesis run
                "model_id": model["id"],
                "trajectory_groups": [{"trajectories": [
                    {"messages_and_choices": [{"role": [1, 2], "content": "x"}], "reward": 1}
                ]}],
            })),
        ]:  # fmt: skip
            status, payload, kept = conn.send(method, path, body)
            assert 400 <= status < 500 and payload["detail"], (path, status, payload)
            assert kept
    finally:
        conn.close()


@pytest.mark.parametrize(
    "fields",
    [
        {"chat_template": "PWNED {{ messages[0].content }}"},
        {"chat_template_kwargs": {"chat_template": "PWNED {{ messages[0].content }}"}},
        {"chat_template_kwargs": {"tokenize": True}},
        {"chat_template_kwargs": {"add_generation_prompt": False}},
    ],
)
def test_request_supplied_templates_and_rendering_arguments_are_refused(backend, fields):
    response = httpx.post(
        backend.base_url + "/chat/completions",
        json={"messages": HELLO, "max_tokens": 2, **fields},
        headers={"Authorization": f"Bearer {backend.api_key}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert "chat_template" in error_message(response.json())


def test_template_variables_are_still_accepted(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert reply.choices[0].message.role == "assistant"


def test_the_servers_own_template_renders_in_a_sandbox(backend):
    from jinja2.exceptions import SecurityError

    tokenizer = backend.app.state.backend.loaded.tokenizer
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SecurityError):
        tokenizer.apply_chat_template(HELLO, chat_template=escape, tokenize=False)


# -- one bad row never fails its batch --------------------------------------------------------


def test_conflicting_constraints_do_not_fail_the_requests_decoding_beside_them(backend):
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    normal = {
        "messages": [{"role": "user", "content": "Count to fifty."}],
        "max_tokens": 24,
        "ignore_eos": True,
    }
    conflicting = [
        {"temperature": 1, "max_tokens": 20, "ignore_eos": True,
         "structured_outputs": {"choice": ["a"]}},
        {"max_tokens": 20, "min_tokens": 10,
         "response_format": {"type": "json_schema",
                             "json_schema": {"name": "b", "schema": {"type": "boolean"}}}},
    ]  # fmt: skip
    results: dict[str, httpx.Response] = {}

    def post(key: str, body: dict) -> None:
        results[key] = httpx.post(
            backend.base_url + "/chat/completions", json=body, headers=headers, timeout=120
        )

    threads = [threading.Thread(target=post, args=(f"normal{i}", normal)) for i in range(4)]
    threads += [
        threading.Thread(target=post, args=(f"bad{i}", {"messages": HELLO, **body}))
        for i, body in enumerate(conflicting)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        response = results[f"normal{i}"]
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 24
    # the constrained ones end where their grammar ends, despite ignore_eos / min_tokens
    choice = results["bad0"].json()["choices"][0]
    assert choice["message"]["content"] == "a" and choice["finish_reason"] == "stop"
    assert results["bad1"].json()["choices"][0]["message"]["content"] in ("true", "false")


class _BreaksAfter:
    """Fault injection: an output constraint that allows nothing after ``n`` tokens."""

    done = False

    def __init__(self, n: int) -> None:
        self.n = n

    def allows_other_than(self, banned) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        self.n -= 1
        return logits if self.n >= 0 else torch.full_like(logits, float("-inf"))

    def consume(self, token: int) -> None:
        pass


FAULT = OutputConstraint("grammar", "fault")


class _FaultyGrammars:
    """The engine's constraint compiler, with one constraint that compiles to ``_BreaksAfter``."""

    def __init__(self, real) -> None:
        self.real = real

    def constraint(self, spec: OutputConstraint):
        return _BreaksAfter(5) if spec is FAULT else self.real.constraint(spec)


def test_a_row_that_fails_while_decoding_fails_alone(backend, monkeypatch):
    engine = backend.app.state.backend.engine
    monkeypatch.setattr(engine, "vocab", _FaultyGrammars(engine.vocab))
    tokenizer = backend.app.state.backend.loaded.tokenizer
    prompt = tokenizer("Tell me about the sea.").input_ids
    events: dict[int, list] = {i: [] for i in range(5)}
    done = threading.Event()

    def sink_for(i: int):
        def sink(event) -> None:
            events[i].append(event)
            if all(e and type(e[-1]).__name__ == "DoneEvent" for e in events.values()):
                done.set()

        return sink

    requests = [
        GenerationRequest(prompt, SamplingParams(max_tokens=16, ignore_eos=True), sink_for(i))
        for i in range(4)
    ]
    requests.append(  # ignore_eos: it must not end on its own before the fault
        GenerationRequest(
            prompt, SamplingParams(max_tokens=16, ignore_eos=True), sink_for(4), FAULT
        )
    )
    for request in requests:
        engine.submit(request)
    assert done.wait(60)
    for i in range(4):
        assert events[i][-1].finish_reason == "length" and len(events[i]) == 17
    assert events[4][-1].finish_reason == "error" and events[4][-1].client_error
    assert len(events[4]) == 6  # five tokens, then the error


def test_a_compiled_constraint_is_copied_on_the_engine_thread_never_recompiled(
    backend, monkeypatch
):
    """Compiling a large grammar is bounded work off the engine's thread (a 400 when it fails);
    each sequence starts from a copy, so n choices of a heavy schema never stall the batch."""
    engine = backend.app.state.backend.engine
    tokenizer = backend.app.state.backend.loaded.tokenizer
    spec = OutputConstraint("choice", ["yes", "no"])
    compiled = engine.compile_constraint(spec)

    class NoCompiling:
        def constraint(self, spec):
            raise AssertionError("compiled on the engine thread")

    monkeypatch.setattr(engine, "vocab", NoCompiling())
    done, texts = threading.Event(), []

    def sink(event) -> None:
        texts.append(event.text)
        if type(event).__name__ == "DoneEvent":
            done.set()

    prompt = tokenizer("Yes or no?").input_ids
    engine.submit(GenerationRequest(prompt, SamplingParams(max_tokens=4), sink, spec, compiled))
    assert done.wait(60)
    assert "".join(texts) in ("yes", "no")


# -- the event loop stays free ----------------------------------------------------------------


def _health_latencies(backend, stop: threading.Event) -> list[float]:
    latencies = []
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.monotonic()
            client.get(backend.base_url + "/health")
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    return latencies


def test_health_answers_within_a_second_while_a_huge_prompt_is_prepared(backend):
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    words = "lorem ipsum dolor sit amet " * 280_000  # 7.5 MB: under the 8 MiB body limit
    stop = threading.Event()
    latencies: list[float] = []
    watcher = threading.Thread(target=lambda: latencies.extend(_health_latencies(backend, stop)))
    watcher.start()
    try:
        time.sleep(0.2)
        response = httpx.post(
            backend.base_url + "/chat/completions",
            json={"messages": [{"role": "user", "content": words}], "max_tokens": 2},
            headers=headers,
            timeout=120,
        )
    finally:
        stop.set()
        watcher.join()
    assert response.status_code == 400
    assert "maximum context length" in error_message(response.json())
    assert len(latencies) >= 5 and max(latencies) < 1.0, max(latencies)


def test_a_body_over_the_limit_is_413_in_the_api_shape(backend):
    body = json.dumps({"messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]})
    headers = {"Authorization": f"Bearer {backend.api_key}", "Content-Type": "application/json"}
    started = time.monotonic()
    response = httpx.post(
        backend.base_url + "/chat/completions", content=body, headers=headers, timeout=60
    )
    assert response.status_code == 413 and "limit" in error_message(response.json())

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    response = httpx.post(
        backend.base_url + "/chat/completions", content=chunks(), headers=headers, timeout=60
    )
    assert response.status_code == 413 and "limit" in error_message(response.json())
    assert time.monotonic() - started < 10


# -- disconnects ------------------------------------------------------------------------------


def test_an_abandoned_non_streaming_request_stops_decoding_within_a_second(backend):
    engine = backend.app.state.backend.engine
    body = {"messages": HELLO, "max_tokens": 3000, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(backend.base_url + "/chat/completions", json=body, headers=headers, timeout=1)
    assert wait_idle(engine, timeout=1.5), "decoding went on after the client left"


# -- paths stay inside the data dir -----------------------------------------------------------


BAD_NAMES = ["..", ".", "a..b", ".hidden", "x" * 200, "a\\b", "%2e%2e", "/abs", "a b", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_names_are_422(oai, backend, name):
    response = httpx.post(
        backend.base_url + "/preview/models",
        json={"project": "p", "name": name, "base_model": backend.model_id},
        headers={"Authorization": f"Bearer {backend.api_key}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


@pytest.mark.parametrize(
    "path",
    [
        "%2e%2e/%2e%2e/%2e%2e",
        "..%2F..%2Fx/p/n",
        "e/%2e%2e/n",
        "e/p/..",
        "e/p/" + "n" * 200,
        "e/p/a%5Cb",
        "%2Fetc/p/n",
    ],
)
def test_artifact_paths_cannot_leave_the_data_dir(backend, path):
    data_dir = Path(backend.app.state.backend.state.data_dir)
    before = {p for p in data_dir.parent.rglob("*")}
    response = httpx.post(
        f"{backend.base_url}/local/artifacts/{path}",
        json={"rows": [{"messages": HELLO}]},
        headers={"Authorization": f"Bearer {backend.api_key}"},
    )
    assert response.status_code in (404, 422), response.text
    assert {p for p in data_dir.parent.rglob("*")} == before


def test_a_dataset_that_is_not_unicode_is_a_400_and_leaves_nothing_behind(backend):
    """A lone surrogate (valid JSON, not Unicode) in a published dataset: before, the half-written
    version directory stayed and made the next publish of that name a 500."""
    connection = Connection(backend)
    path = "/local/artifacts/e/p/surrogates"
    bad = '{"rows": [{"messages": [{"role": "user", "content": "\\ud800"}]}]}'
    status, body, alive = connection.send("POST", path, bad)
    assert status == 400 and "Unicode" in body["detail"] and alive
    status, body, _ = connection.send("POST", path, json.dumps({"rows": [{"messages": HELLO}]}))
    assert status == 200 and body["url"].endswith("surrogates:v0")
    store = Path(backend.app.state.backend.state.artifacts_dir) / "e" / "p" / "surrogates"
    assert sorted(p.name for p in store.iterdir()) == ["v0"]
    connection.close()


def test_a_symlink_out_of_the_artifact_store_is_refused(backend, tmp_path):
    state = backend.app.state.backend.state
    outside = tmp_path / "outside"
    outside.mkdir()
    link = state.artifacts_dir / "linked"
    link.symlink_to(outside, target_is_directory=True)
    try:
        response = httpx.post(
            f"{backend.base_url}/local/artifacts/linked/p/n",
            json={"rows": [{"messages": HELLO}]},
            headers={"Authorization": f"Bearer {backend.api_key}"},
        )
        assert response.status_code == 400 and "outside" in response.json()["detail"]
        assert not any(outside.iterdir())
    finally:
        link.unlink()


# -- SFT data only from the store -------------------------------------------------------------


def _sft_model(oai, backend, name: str) -> str:
    body = {"project": "hostile", "name": name, "base_model": backend.model_id}
    return oai.post("/preview/models", body={**body, "return_existing": True}, cast_to=object)["id"]


def _sft(backend, model_id: str, url: str) -> httpx.Response:
    return httpx.post(
        backend.base_url + "/preview/sft-training-jobs",
        json={"model_id": model_id, "training_data_url": url},
        headers={"Authorization": f"Bearer {backend.api_key}"},
    )


def _failure(backend, job_id: str) -> str:
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    for _ in range(300):
        events = httpx.get(
            f"{backend.base_url}/preview/training-jobs/{job_id}/events?limit=100", headers=headers
        ).json()["data"]
        for event in events:
            if event["type"] == "training_failed":
                return event["data"]["error_message"]
            assert event["type"] != "training_ended", "the job should not have trained"
        time.sleep(0.1)
    raise AssertionError("the job did not end")


def test_sft_refuses_file_urls_and_traversal_by_default(oai, backend, tmp_path):
    model_id = _sft_model(oai, backend, "sft-hostile")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [*HELLO, {"role": "assistant", "content": "Hi"}]}))
    for url in (f"file://{data}", "wandb-artifact:///../../x", "wandb-artifact:///e/../x/y"):
        response = _sft(backend, model_id, url)
        assert response.status_code == 422, (url, response.text)


def test_sft_file_urls_outside_the_allowed_dir_all_fail_with_one_text(oai, backend, tmp_path):
    worker = backend.app.state.backend.worker
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "secret.jsonl"
    outside.write_text(json.dumps({"messages": [*HELLO, {"role": "assistant", "content": "Hi"}]}))
    (allowed / "bad.jsonl").write_text("not json\n")
    (allowed / "link.jsonl").symlink_to(outside)
    model_id = _sft_model(oai, backend, "sft-allowed-dir")
    worker.sft_data_dir = allowed
    try:
        texts = set()
        for url in (
            f"file://{outside}",  # exists, readable, valid, but outside
            f"file://{allowed}/../secret.jsonl",
            f"file://{allowed}/link.jsonl",
            f"file://{allowed}/missing.jsonl",
            f"file://{allowed}/bad.jsonl",
        ):
            response = _sft(backend, model_id, url)
            assert response.status_code == 200, response.text
            texts.add(_failure(backend, response.json()["id"]).replace(url, "URL"))
        assert len(texts) == 1, texts
    finally:
        worker.sft_data_dir = None


# -- docs routes ------------------------------------------------------------------------------


def test_docs_routes_are_off_unless_asked_for(backend):
    from fastapi.testclient import TestClient

    from wandb_serverless.local.app import create_app

    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(backend.base_url.removesuffix("/v1") + path).status_code == 404
    with TestClient(create_app(backend.app.state.backend, docs=True)) as client:
        assert client.get("/openapi.json").json()["info"]["title"]


def test_an_unexpected_error_is_a_json_500_and_the_connection_lives_on(backend, monkeypatch):
    state = backend.app.state.backend.state

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(state, "get_model", broken)
    conn = Connection(backend)
    try:
        status, body, kept = conn.send("GET", "/preview/models/x/checkpoints")
        assert status == 500 and "injected" not in body["detail"] and kept
        monkeypatch.undo()
        status, body, kept = conn.send("POST", "/chat/completions", chat_body())
        assert status == 200
    finally:
        conn.close()
    assert wait_idle(backend.app.state.backend.engine)
