"""cortex-fsm verify --config: the model checker on a configured fleet -- its
classes of interchangeable nodes, a clean fleet, and planted misconfigurations
found with a counterexample that replay reproduces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cortex_fsm.ci.worlds import config_world, verify_config
from cortex_fsm.drivers.config import load_config


def _node(name: str, gpus: int, vram: int) -> str:
    return (
        f'[[neurons]]\nname = "{name}"\nendpoint = "http://{name}.lan:13131"\n'
        f"gpus = {gpus}\nvram_mb = {vram}\n\n"
    )


#: Ten nodes in four classes (four 2x80 GB, three 1x24 GB, two 4x48 GB, one
#: pinned 1x24 GB), five models, two aliases: no problem at all.
CONFIG = (
    'models_config = "models.toml"\n\n'
    + "".join(_node(f"big{i}", 2, 81920) for i in range(4))
    + "".join(_node(f"small{i}", 1, 24000) for i in range(3))
    + "".join(_node(f"quad{i}", 4, 49152) for i in range(2))
    + _node("pinbox", 1, 24000)
)
MODELS = """[[models]]
id = "org/Huge-400B"
min_devices = 4
min_device_vram_mb = 40000

[[models]]
id = "org/Big-70B"
min_devices = 2
min_device_vram_mb = 40000

[[models]]
id = "org/Small-8B"

[[models]]
id = "org/Tiny-1B"

[[models]]
id = "org/Pinned-7B"
pinned_on = ["pinbox"]

[aliases]
"tier/large" = "org/Big-70B"
"tier/small" = "org/Small-8B"
"""


def write(tmp_path: Path, models: str = MODELS, config: str = CONFIG) -> Path:
    (tmp_path / "models.toml").write_text(models)
    path = tmp_path / "cortex.toml"
    path.write_text(config)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_interchangeable_nodes_are_kept_twice_first_and_last(tmp_path: Path) -> None:
    spec = config_world(load_config(write(tmp_path)))
    kept = {c.members: c.kept for c in spec.classes}
    assert kept == {
        ("big0", "big1", "big2", "big3"): ("big0", "big3"),
        ("small0", "small1", "small2"): ("small0", "small2"),
        ("quad0", "quad1"): ("quad0", "quad1"),
        ("pinbox",): ("pinbox",),  # pinned: a class of its own, though sized like small*
    }
    assert spec.world.names == ("big0", "big3", "small0", "small2", "quad0", "quad1", "pinbox")
    assert set(spec.judged) == {*spec.world.the_catalogue().profiles, "tier/large", "tier/small"}


def test_a_clean_fleet_passes_with_what_the_bound_leaves_out(tmp_path: Path) -> None:
    result = cli("verify", "--config", str(write(tmp_path)), "--depth", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "10 node(s) as 7, 5 model(s), 2 alias(es)" in out
    assert "4 node(s) (2 GPU(s) [81920, 81920] MB) as 2: big0, big3" in out
    assert "PASS  SERVED" in out and "PASS  R1" in out and "FAIL" not in out
    assert "left out by the bound: 3 node(s) merged" in out
    assert "everything more than 2 observations after the start" in out
    assert "all invariants hold on every explored state" in out
    states = int(out.split(" states, ")[0].rsplit("\n", 1)[-1])
    assert states > 100  # polls and failures on every kept node, two deep


PLANTED = {
    # an alias to an alias: the second hop is never followed
    "alias chain": (MODELS + '"tier/chain" = "tier/large"\n', "tier/chain", "model_not_found"),
    # pinned on a node whose topology cannot host it
    "infeasible pin": (
        MODELS.replace('pinned_on = ["pinbox"]', 'pinned_on = ["pinbox"]\nmin_devices = 2'),
        "org/Pinned-7B",
        "no_feasible_neuron",
    ),
    # an alias that hides a catalogued model
    "shadowing alias": (MODELS + '"org/Tiny-1B" = "org/Small-8B"\n', "org/Tiny-1B", "cold_load"),
    # an alias to a model nobody catalogues
    "dangling alias": (MODELS + '"tier/gone" = "org/Gone"\n', "tier/gone", "model_not_found"),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_a_planted_misconfiguration_is_found_and_replays(tmp_path: Path, name: str) -> None:
    models, request, outcome = PLANTED[name]
    path = write(tmp_path, models)
    trace = tmp_path / "cx.jsonl"
    result = verify_config(path, counterexample=trace)
    assert not result.ok
    cx = result.result.counterexample
    assert cx is not None
    assert {(v.invariant, v.request) for v in cx.violations} == {("SERVED", request)}
    assert result.trace == str(trace) and result.replayed
    # replay accepts the counterexample and tells the request what the search saw
    replayed = cli("replay", str(trace))
    assert replayed.returncode == 0, replayed.stderr
    lines = [json.loads(x) for x in replayed.stdout.splitlines()]
    assert lines[0]["model"] == request and lines[0]["outcome"] == outcome


def test_all_does_not_stop_at_the_first_violation(tmp_path: Path) -> None:
    path = write(tmp_path, PLANTED["alias chain"][0])
    first = verify_config(path, depth=1)
    every = verify_config(path, depth=1, stop_at_first=False)
    assert first.result.stopped_early
    assert not every.ok and not every.result.stopped_early
    # a violating state is not expanded: the start state violates, so that is all
    assert (every.result.states, every.result.violated) == (1, {"SERVED": 0})


def test_the_command_prints_the_counterexample(tmp_path: Path) -> None:
    path = write(tmp_path, PLANTED["alias chain"][0])
    trace = tmp_path / "cx.jsonl"
    result = cli("verify", "--config", str(path), "--counterexample", str(trace))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  SERVED" in result.stdout
    assert "request 'tier/chain': model_not_found (404)" in result.stdout
    assert f"written to {trace} (its replay gives the decision above)" in result.stdout
    assert trace.is_file()


def test_bad_arguments_and_unreadable_configs_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path)
    mixed = cli("verify", "--config", str(path), "--nodes", "2")
    assert mixed.returncode == 2
    assert mixed.stderr == (
        "cortex-fsm verify: error: --nodes cannot be combined with --config "
        "(the configuration decides it)\n"
    )
    missing = cli("verify", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("cortex-fsm verify: error: ")
    assert "nope.toml" in missing.stderr and len(missing.stderr.splitlines()) == 1
