"""Scenario files, arrival files and the seeded processes behind a simulation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cortex_fsm.errors import ConfigError
from cortex_fsm.research.arrivals import ArrivalsError, read_arrivals
from cortex_fsm.research.processes import requests, stream, truth_changes
from cortex_fsm.research.scenario import (
    Failures,
    load_scenario,
    parse_grid,
    scenario_from_mapping,
    with_assignments,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "research"

BASE = """
[run]
duration_s = 600.0
[[neurons]]
name = "gpu-a"
loaded = ["m"]
[traffic]
rate_per_s = 2.0
"""


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_scenarios_load() -> None:
    for name in ("blips", "azure", "burstgpt", "mooncake"):
        scenario = load_scenario(EXAMPLES / f"{name}.toml")
        assert scenario.neurons
    blips = load_scenario(EXAMPLES / "blips.toml")
    assert blips.failures["gpu-h"].blip_per_hour == 30.0
    assert blips.failures["gpu-h"].mttr_s == 240.0  # the default of [failures] still applies
    assert blips.failures["gpu-a"].slow_poll == 0.03
    assert blips.neurons[0].declared and len(blips.neurons[0].devices) == 2
    burst = load_scenario(EXAMPLES / "burstgpt.toml")
    assert burst.traffic.format == "burstgpt"
    assert burst.neurons[1].kind == "vllm" and burst.neurons[1].devices == ()


def test_the_only_known_model_is_requested_when_models_is_absent(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, BASE))
    assert scenario.traffic.models == (("m", 1.0),)
    assert scenario.neurons[0].endpoint  # optional in a scenario


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "[failures]\nmtbf_s = -1\n", "[failures] mtbf_s must be a number of seconds > 0"),
        (BASE + "[failures]\nslow_poll = 1.5\n", "[failures] slow_poll must be a probability"),
        (BASE + "[failures]\nmtbf = 10\n", "[failures] unknown key 'mtbf'"),
        (BASE + "[failures.gpu-z]\nblip_s = 1\n", "[failures.gpu-z] names no neuron"),
        (BASE + "[failures.gpu-a]\nblips = 1\n", "[failures.gpu-a] unknown key 'blips'"),
        (BASE + "[policy]\nfailure_threshold = 0\n", "[policy]"),
        (BASE + "[policy]\nthreshold = 2\n", "unknown policy key 'threshold'"),
        (BASE + "[extra]\n", "unknown key 'extra'"),
        (BASE.replace("rate_per_s = 2.0", 'arrivals = "x.csv"\nrate_per_s = 1.0'), "exactly one"),
        (BASE.replace('loaded = ["m"]', 'loaded = ["m", "m"]'), "loaded lists a model twice"),
        (BASE.replace('loaded = ["m"]', 'kind = "vllm"\ngpus = 2'), "no declared topology"),
        (BASE.replace('loaded = ["m"]', 'kind = "tgi"'), "kind must be one of"),
        (BASE.replace('loaded = ["m"]', "gpus = 0"), "gpus must be an integer >= 1"),
        (BASE.replace("duration_s = 600.0", ""), "duration_s is required"),
        (BASE.replace('loaded = ["m"]', ""), "models is required"),
        (BASE + "[traffic.models]\nm = 0\n", "models.m must be a number > 0"),
        ("[[neurons]]\nname = \n", "invalid TOML"),
    ],
)
def test_malformed_scenarios_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_grid_assignments_are_validated_like_the_file(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, BASE))
    changed = with_assignments(
        scenario, {"failure_threshold": 5, "failures.blip_per_hour": 3.0, "traffic.rate_per_s": 9}
    )
    assert changed.policy.failure_threshold == 5
    assert changed.failures["gpu-a"].blip_per_hour == 3.0
    assert changed.traffic.rate_per_s == 9.0
    assert scenario.policy.failure_threshold == 3  # the original is untouched
    with pytest.raises(ConfigError, match="failure_threshold"):
        with_assignments(scenario, {"failure_threshold": 0})
    with pytest.raises(ConfigError, match="grid key"):
        with_assignments(scenario, {"neurons.x": 1})
    assert parse_grid("failure_threshold=1,2,3") == ("failure_threshold", [1, 2, 3])
    assert parse_grid("poll_interval=2.5,10") == ("poll_interval", [2.5, 10])
    for bad in ("failure_threshold", "x=", "x=1,1"):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid(bad)


# --- arrival files ----------------------------------------------------------------------------


def _rows(path: Path) -> int:
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    return len(lines) - (0 if path.suffix == ".jsonl" else 1)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("azure-sample.csv", "azure"),
        ("burstgpt-sample.csv", "burstgpt"),
        ("mooncake-sample.jsonl", "mooncake"),
    ],
)
def test_sample_files_give_one_arrival_per_row(name: str, fmt: str) -> None:
    path = EXAMPLES / name
    rows = list(read_arrivals(path))
    assert len(rows) == _rows(path)
    assert rows[0].t == 0.0
    assert all(a.t <= b.t for a, b in itertools.pairwise(rows))
    assert list(read_arrivals(path, fmt)) == rows


def test_azure_timestamps_keep_all_seven_digits(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,4808,10\n"
        "2023-11-16 18:15:46.6805901,3180,8\n"
        "2023-11-16 18:16:46.9,1,2\n"
        "2023-11-17 00:00:00,1,2\n",
        "a.csv",
    )
    rows = list(read_arrivals(path))
    assert [r.t for r in rows] == [0.0, 1e-7, 60.2194100, 20653.31941]
    assert (rows[1].input_tokens, rows[1].output_tokens, rows[1].model) == (3180, 8, None)


def test_burstgpt_models_go_through_the_map() -> None:
    path = EXAMPLES / "burstgpt-sample.csv"
    rows = list(read_arrivals(path, model_map={"ChatGPT": "small", "GPT-4": "large"}))
    assert {r.model for r in rows} == {"small", "large"}
    assert {r.model for r in read_arrivals(path)} == {None}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1\n",
            ":2: expected 3 columns",
        ),
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16T18:15:46,1,2\n",
            ":2: TIMESTAMP must look like",
        ),
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,x,2\n",
            ":2: ContextTokens must be a whole number",
        ),
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:15:46,1,2\n2023-11-16 18:15:45,1,2\n",
            ":3: time goes backwards",
        ),
        ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", "no arrivals"),
        ("a.csv", "", "cannot tell the format"),
        ("a.csv", "time,tokens\n1,2\n", ":1: cannot tell the format"),
        (
            "b.csv",
            "Timestamp,Model,Request tokens,Response tokens\n1,ChatGPT,5,-1\n",
            ":2: Response tokens must be",
        ),
        (
            "b.csv",
            "Timestamp,Model,Request tokens,Response tokens\nnan,ChatGPT,5,1\n",
            ":2: Timestamp must be a finite",
        ),
        (
            "m.jsonl",
            '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": 5,\n',
            ":2: not valid JSON",
        ),
        ("m.jsonl", '{"timestamp": 0, "input_length": 1}\n', ":1: missing field 'output_length'"),
        ("m.jsonl", "[1, 2]\n", ":1: expected a JSON object"),
        (
            "m.jsonl",
            '{"timestamp": "0", "input_length": 1, "output_length": 1}\n',
            ":1: timestamp must be a number",
        ),
    ],
)
def test_malformed_arrival_files_are_one_line_with_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = _write(tmp_path, text, name)
    with pytest.raises(ArrivalsError) as info:
        list(read_arrivals(path))
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unmapped_burstgpt_model_names_the_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "Timestamp,Model,Request tokens,Response tokens\n1,ChatGPT,5,1\n2,Claude,1,1\n",
        "b.csv",
    )
    with pytest.raises(
        ArrivalsError, match=r"b\.csv:3: Model 'Claude' is not in \[traffic\] model_map"
    ):
        list(read_arrivals(path, model_map={"ChatGPT": "m"}))


# --- seeded processes -------------------------------------------------------------------------


def test_streams_are_independent_and_reproducible() -> None:
    assert stream(1, "a").random() == stream(1, "a").random()
    assert stream(1, "a").random() != stream(1, "b").random()
    assert stream(1, "a").random() != stream(2, "a").random()


def test_truth_merges_outages_and_blips() -> None:
    failures = Failures(mtbf_s=600.0, mttr_s=60.0, blip_per_hour=20.0, blip_s=20.0)
    changes = list(itertools.islice(truth_changes("n", failures, 3), 400))
    assert [c.up for c in changes] == [False, True] * 200  # strictly alternating
    assert all(a.t <= b.t for a, b in itertools.pairwise(changes))
    whys = {c.why for c in changes}
    assert whys == {"outage", "repaired", "blip", "blip over"}
    # the same seed gives the same truth; the blip stream alone does not move the outages
    assert changes == list(itertools.islice(truth_changes("n", failures, 3), 400))
    quiet = Failures(mtbf_s=600.0, mttr_s=60.0)
    outages = [c for c in itertools.islice(truth_changes("n", quiet, 3), 10) if not c.up]
    assert outages and all(c.why == "outage" for c in outages)
    assert list(truth_changes("n", Failures(), 3)) == []  # no failures configured


def test_traffic_does_not_depend_on_the_policy(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, BASE))
    other = with_assignments(scenario, {"failure_threshold": 6, "poll_interval": 2})
    a = list(requests(scenario.traffic, 7, 600.0))
    b = list(requests(other.traffic, 7, 600.0))
    assert a == b and 900 < len(a) < 1500  # ~2/s for 600 s
    assert a != list(requests(scenario.traffic, 8, 600.0))


def test_scenario_from_mapping_without_a_file() -> None:
    scenario = scenario_from_mapping(
        {
            "neurons": [{"name": "x", "loaded": ["m"]}],
            "traffic": {"rate_per_s": 1},
            "run": {"duration_s": 5},
        }
    )
    assert scenario.source == "scenario.toml"
