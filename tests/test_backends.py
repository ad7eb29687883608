"""Backend adapters: each kind's answers -> models reports, poll failures, load readings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex_fsm.backends import (
    BACKENDS,
    KINDS,
    SNIFF_CALLS,
    Answer,
    Load,
    backend,
    guess_kind,
    health_body,
    models_body,
    wrong_kind_message,
    wrong_kind_symptom,
)
from cortex_fsm.fleet import NEURON_KINDS, ModelsReport, ModelStatus, PollFailure
from cortex_fsm.wire import Invalid, parse_health, parse_models

LOADED = ModelStatus.LOADED


def ok(path: str, value: object, status: int = 200) -> Answer:
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Answer(path=path, status=status, body=body)


def openai_list(*ids: str, owner: str = "vllm") -> dict[str, object]:
    return {
        "object": "list",
        "data": [
            {"id": i, "object": "model", "created": 1, "owned_by": owner, "root": i} for i in ids
        ],
    }


def gauges(running: str, waiting: str, series: dict[str, tuple[float, float]]) -> bytes:
    """Prometheus text with one series per label set (``""``: no labels)."""
    lines = []
    for name, index in ((running, 0), (waiting, 1)):
        lines += [f"# HELP {name} Requests.", f"# TYPE {name} gauge"]
        for labels, values in series.items():
            lines.append(
                f"{name}{{{labels}}} {values[index]}" if labels else f"{name} {values[index]}"
            )
    lines += [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 12.0',
    ]
    return ("\n".join(lines) + "\n").encode()


def poll(kind: str, answers: dict[str, Answer], known: tuple[str, ...] = ()) -> object:
    b = backend(kind)
    failure = b.live(answers[b.liveness])
    if failure is not None:
        return failure
    return b.models(answers, known)


# -- the table ------------------------------------------------------------------------------


def test_every_kind_has_an_adapter_and_only_the_neuron_is_a_daemon() -> None:
    assert KINDS == ("neuron", "openai", "vllm", "sglang", "llamacpp", "ollama")
    assert KINDS == NEURON_KINDS  # the kinds a trace header may name
    assert [k for k, b in BACKENDS.items() if b.daemon] == ["neuron"]
    for kind, b in BACKENDS.items():
        assert b.kind == kind
        assert (b.metrics is None) == (b.load is None)
    assert backend("vllm").metrics == "/metrics"
    with pytest.raises(KeyError):
        backend("tgi")


# -- models polls ------------------------------------------------------------------------------


def test_openai_lists_every_id_loaded() -> None:
    answers = {"/v1/models": ok("/v1/models", openai_list("a", "b", owner="openai"))}
    assert poll("openai", answers) == ModelsReport(models={"a": LOADED, "b": LOADED})


@pytest.mark.parametrize("kind", ["vllm", "sglang", "llamacpp"])
def test_health_then_v1_models(kind: str) -> None:
    answers = {
        "/health": ok("/health", b""),
        "/v1/models": ok("/v1/models", openai_list("org/M", "org/M-lora")),
    }
    assert poll(kind, answers) == ModelsReport(models={"org/M": LOADED, "org/M-lora": LOADED})


@pytest.mark.parametrize("kind", ["vllm", "sglang", "llamacpp"])
def test_a_failed_liveness_call_is_the_poll_failure(kind: str) -> None:
    assert poll(kind, {"/health": Answer.failed("/health", "timeout")}) == PollFailure(
        reason="timeout"
    )
    assert poll(kind, {"/health": ok("/health", b"", status=500)}) == PollFailure(
        reason="status:500"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([{"id": "m"}], "invalid /v1/models body: expected an object, got an array"),
        ({"object": "list"}, "invalid /v1/models body: data is null, not a list"),
        ({"data": {"id": "m"}}, "invalid /v1/models body: data is an object, not a list"),
        ({"data": [{"name": "m"}]}, "invalid /v1/models body: data[0] has no string id"),
        ({"data": ["m"]}, "invalid /v1/models body: data[0] has no string id"),
        ({"data": [{"id": ""}]}, "invalid /v1/models body: data[0] has no string id"),
        (b"\xff\xfe not utf-8", "/v1/models: invalid json ('\ufffd\ufffd not utf-8')"),
        (b"", "/v1/models: invalid json (empty body)"),
    ],
)
def test_a_malformed_model_list_is_a_poll_failure_with_the_reason(
    body: object, reason: str
) -> None:
    answers = {"/health": ok("/health", b""), "/v1/models": ok("/v1/models", body)}
    assert poll("vllm", answers) == PollFailure(reason=reason)
    if isinstance(body, dict | list):
        assert poll("openai", {"/v1/models": ok("/v1/models", body)}) == PollFailure(reason=reason)


def test_a_failed_model_list_after_a_good_liveness_call_names_the_path() -> None:
    answers = {"/health": ok("/health", b""), "/v1/models": Answer.failed("/v1/models", "closed")}
    assert poll("sglang", answers) == PollFailure(reason="/v1/models: closed")


LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def test_llamacpp_loading_is_not_a_failure_every_model_is_recovering() -> None:
    health = ok("/health", LOADING, status=503)
    listed = {"/health": health, "/v1/models": ok("/v1/models", openai_list("g.gguf"))}
    recovering = ModelsReport(models={"g.gguf": ModelStatus.RECOVERING})
    assert poll("llamacpp", listed) == recovering
    # Older servers refuse /v1/models while loading too: the ids last seen recover.
    refused = {"/health": health, "/v1/models": ok("/v1/models", LOADING, status=503)}
    assert poll("llamacpp", refused, known=("g.gguf",)) == recovering
    assert poll("llamacpp", refused) == ModelsReport(models={})


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": 503, "message": "Unavailable", "type": "unavailable_error"}},
        {"message": "Loading model"},
        b"Loading model",
    ],
)
def test_other_503s_from_llamacpp_fail_the_poll(body: object) -> None:
    assert poll("llamacpp", {"/health": ok("/health", body, status=503)}) == PollFailure(
        reason="status:503"
    )
    # ... and the same "Loading model" 503 from another kind is a failure.
    assert poll("vllm", {"/health": ok("/health", LOADING, status=503)}) == PollFailure(
        reason="status:503"
    )


def tags(*names: str) -> dict[str, object]:
    return {
        "models": [
            {
                "name": n,
                "model": n,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 2019393189,
                "digest": "a80c4f17acd5",
                "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B"},
            }
            for n in names
        ]
    }


def test_ollama_tags_are_unloaded_unless_running() -> None:
    answers = {
        "/api/tags": ok("/api/tags", tags("llama3.2:latest", "qwen3:8b")),
        "/api/ps": ok("/api/ps", tags("qwen3:8b", "mistral:7b")),
    }
    assert poll("ollama", answers) == ModelsReport(
        models={
            "llama3.2:latest": ModelStatus.UNLOADED,
            "qwen3:8b": LOADED,
            "mistral:7b": LOADED,
        }
    )


@pytest.mark.parametrize(
    ("path", "answer", "reason"),
    [
        ("/api/tags", ok("/api/tags", [1]), "invalid /api/tags body: expected an object"),
        ("/api/tags", ok("/api/tags", {"models": None}), "models is null, not a list"),
        ("/api/ps", ok("/api/ps", {"models": [{"size": 1}]}), "models[0] has no string name"),
        ("/api/ps", Answer.failed("/api/ps", "timeout"), "/api/ps: timeout"),
        ("/api/tags", ok("/api/tags", b"\x80"), "/api/tags: invalid json"),
    ],
)
def test_ollama_malformed_answers_fail_the_poll(path: str, answer: Answer, reason: str) -> None:
    answers = {"/api/tags": ok("/api/tags", tags("m")), "/api/ps": ok("/api/ps", tags())}
    answers[path] = answer
    verdict = poll("ollama", answers)
    assert isinstance(verdict, PollFailure)
    assert reason in verdict.reason


def test_neuron_models_are_the_engine_s_own_validation() -> None:
    body = [{"id": "m", "status": "unloaded", "harness": "candle"}]
    assert poll("neuron", {"/models": ok("/models", body)}) == parse_models(body)
    assert poll("neuron", {"/models": ok("/models", b"nope")}) == PollFailure(
        reason="invalid json ('nope')"
    )
    verdict = poll("neuron", {"/models": ok("/models", {"data": []})})
    assert verdict == PollFailure(reason="invalid /models body: expected an array, got an object")


# -- load readings -------------------------------------------------------------------------------

VLLM = backend("vllm")


def vllm_metrics(series: dict[str, tuple[float, float]]) -> Answer:
    return ok("/metrics", gauges("vllm:num_requests_running", "vllm:num_requests_waiting", series))


def test_vllm_load_per_model_name_summed_over_engines() -> None:
    answer = vllm_metrics(
        {
            'engine="0",model_name="org/M"': (2, 5),
            'engine="1",model_name="org/M"': (1, 0),
        }
    )
    assert VLLM.load is not None
    assert VLLM.load(answer, ["org/M"]) == {"org/M": Load(in_flight=3, queue_depth=5)}


def test_a_model_without_its_own_series_reads_the_whole_server() -> None:
    answer = vllm_metrics({'engine="0",model_name="org/M"': (2, 1)})
    assert VLLM.load is not None
    assert VLLM.load(answer, ["org/M", "org/M-lora"]) == {
        "org/M": Load(in_flight=2, queue_depth=1),
        "org/M-lora": Load(in_flight=2, queue_depth=1),
    }


def test_sglang_and_llamacpp_read_their_own_gauges() -> None:
    sglang = ok(
        "/metrics",
        gauges(
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            {
                'model_name="m",engine_type="unified",tp_rank="0",pp_rank="0",dp_rank="0"': (4, 2),
                'model_name="m",engine_type="unified",tp_rank="0",pp_rank="0",dp_rank="1"': (1, 1),
            },
        ),
    )
    load = backend("sglang").load
    assert load is not None
    assert load(sglang, ["m"]) == {"m": Load(in_flight=5, queue_depth=3)}
    llama = ok(
        "/metrics",
        gauges("llamacpp:requests_processing", "llamacpp:requests_deferred", {"": (1, 7)}),
    )
    load = backend("llamacpp").load
    assert load is not None
    assert load(llama, ["a.gguf"]) == {"a.gguf": Load(in_flight=1, queue_depth=7)}
    # vLLM's gauges are not SGLang's:
    assert isinstance(backend("sglang").load(vllm_metrics({"": (1, 1)}), ["m"]), Invalid)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'vllm:num_requests_running{model_name="m} 1\n', "not Prometheus text"),
        (b'vllm:num_requests_running{model_name="m"} many\n', "not Prometheus text"),
        (b"vllm:num_requests_running 1\n", "no vllm:num_requests_waiting gauge"),
        (b"<html>metrics are off</html>", "no vllm:num_requests_running or"),
        (b"", "no vllm:num_requests_running or vllm:num_requests_waiting gauge"),
        (b"vllm:num_requests_running -1\nvllm:num_requests_waiting 0\n", "is -1"),
        (b"vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\n", "is nan"),
        (b"vllm:num_requests_running 1\nvllm:num_requests_waiting +Inf\n", "is inf"),
    ],
)
def test_bad_metrics_are_invalid_with_a_reason(body: bytes, reason: str) -> None:
    assert VLLM.load is not None
    reading = VLLM.load(ok("/metrics", body), ["m"])
    assert isinstance(reading, Invalid)
    assert reading.reason.startswith("invalid /metrics body: ")
    assert reason in reading.reason


def test_a_metrics_endpoint_that_is_off_is_invalid_with_its_status() -> None:
    # llama-server without --metrics answers 501.
    answer = ok("/metrics", {"error": {"code": 501, "message": "..."}}, status=501)
    assert backend("llamacpp").load(answer, ["m"]) == Invalid(reason="/metrics: status:501")  # type: ignore[misc]


def test_the_neuron_health_reading_keeps_both_numbers() -> None:
    body = {"uptime_secs": 1, "models": [{"id": "m", "in_flight": 2, "queue_depth": 3}]}
    load = backend("neuron").load
    assert load is not None
    assert load(ok("/health", body), []) == {"m": Load(in_flight=2, queue_depth=3)}
    assert isinstance(load(ok("/health", {"models": [{"id": "m"}]}), []), Invalid)
    assert isinstance(load(ok("/health", b"\xff"), []), Invalid)


def test_neuron_shaped_bodies_parse_back_to_the_same_observation() -> None:
    report = ModelsReport(models={"a": LOADED, "b": ModelStatus.RECOVERING})
    assert parse_models(models_body(report)) == report
    readings = {"a": Load(in_flight=1, queue_depth=2)}
    assert parse_health(health_body(readings)) == {"a": 3}


@given(st.binary(max_size=300))
def test_no_answer_body_ever_raises(body: bytes) -> None:
    for kind, b in BACKENDS.items():
        answers = {p: Answer(path=p, status=200, body=body) for p in (b.liveness, *b.model_calls)}
        poll(kind, answers)
        if b.load is not None:
            b.load(Answer(path=b.metrics or "", status=200, body=body), ["m"])
    guess_kind({p: Answer(path=p, status=200, body=body) for p in SNIFF_CALLS})


@given(
    st.lists(
        st.sampled_from(
            [
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "{",
                "}",
                'model_name="m"',
                ",",
                "=",
                '"',
                " ",
                "1",
                "-2.5",
                "NaN",
                "\n",
                "# TYPE ",
                " gauge",
                " counter",
                "_total",
                "\\",
            ]
        ),
        max_size=30,
    ).map("".join)
)
def test_no_metrics_text_ever_raises(text: str) -> None:
    assert VLLM.load is not None
    reading = VLLM.load(ok("/metrics", text.encode()), ["m"])
    if not isinstance(reading, Invalid):
        assert all(v.in_flight >= 0 and v.queue_depth >= 0 for v in reading.values())


# -- the wrong kind -------------------------------------------------------------------------------


def test_a_404_or_an_object_from_a_neuron_s_models_is_the_symptom() -> None:
    missing = ok("/models", {"detail": "Not Found"}, status=404)
    assert wrong_kind_symptom("neuron", [missing]) == missing
    listing = ok("/models", openai_list("m", owner="llamacpp"))
    assert wrong_kind_symptom("neuron", [listing]) == listing
    assert wrong_kind_symptom("openai", [listing]) is None
    assert wrong_kind_symptom("neuron", [ok("/models", [])]) is None
    assert wrong_kind_symptom("vllm", [ok("/health", b""), ok("/v1/models", b"", 405)]) is not None
    assert wrong_kind_symptom("vllm", [Answer.failed("/health", "timeout")]) is None


def sniffed(**answers: Answer) -> dict[str, Answer]:
    out = {p: ok(p, {"detail": "Not Found"}, status=404) for p in SNIFF_CALLS}
    out.update({a.path: a for a in answers.values()})
    return out


def test_guess_kind_from_each_backend_s_answers() -> None:
    vllm_metrics_answer = vllm_metrics({'model_name="m"': (0, 0)})
    assert guess_kind(sniffed(m=vllm_metrics_answer, v=ok("/v1/models", openai_list("m")))) == (
        "vllm",
        "its /metrics has vllm: series",
    )
    assert guess_kind(sniffed(v=ok("/v1/models", openai_list("m", owner="sglang"))))[0] == (  # type: ignore[index]
        "sglang"
    )
    assert guess_kind(sniffed(v=ok("/v1/models", openai_list("m", owner="llamacpp"))))[0] == (  # type: ignore[index]
        "llamacpp"
    )
    ollama = sniffed(t=ok("/api/tags", tags("m:latest")), v=ok("/v1/models", openai_list("m")))
    ollama["/v1/models"] = ok("/v1/models", openai_list("m:latest", owner="library"))
    assert guess_kind(ollama) == ("ollama", "GET /api/tags answers Ollama's model list")
    assert guess_kind(sniffed(v=ok("/v1/models", openai_list("m", owner="me")))) == (
        "openai",
        "GET /v1/models answers an OpenAI model list",
    )
    assert guess_kind(sniffed(n=ok("/models", [{"id": "m", "status": "loaded"}]))) == (
        "neuron",
        "GET /models answers a neuron's model array",
    )
    assert guess_kind(sniffed()) is None
    # llama.cpp answers /api/tags too, with an OpenAI list in it: not Ollama.
    both = {**tags("m"), **openai_list("m", owner="me")}
    assert guess_kind(sniffed(t=ok("/api/tags", both))) is None


def test_the_wrong_kind_message_names_node_and_setting() -> None:
    symptom = ok("/models", b"", status=404)
    line = wrong_kind_message("gpu-a", "neuron", symptom, ("vllm", "its /metrics has vllm: series"))
    assert line == (
        "node 'gpu-a' (kind = \"neuron\") answered GET /models with status:404, but it looks "
        'like vLLM (its /metrics has vllm: series): set kind = "vllm" in its [[neurons]] entry'
    )
    line = wrong_kind_message("gpu-a", "vllm", ok("/v1/models", b"", 404), None)
    assert "does not look like any kind" in line
    assert '"ollama"' in line
