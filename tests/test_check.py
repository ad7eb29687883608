"""cortex-fsm check: every problem code, produced by a configuration that has the
problem and by none that does not; exit codes, formats, and serve's refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cortex_fsm import Device, Neuron, Policy
from cortex_fsm.catalogue import catalogue_from_mapping
from cortex_fsm.ci.check import CODES, Problem, check_config, lint, render


def node(
    name: str, gpus: int | None = 2, vram: int = 81920, *, kind: str = "neuron", host: str = ""
) -> Neuron:
    devices = (
        None if gpus is None else tuple(Device(index=i, vram_total_mb=vram) for i in range(gpus))
    )
    return Neuron(
        name=name,
        endpoint=f"http://{host or name}.lan:13131",
        kind=kind,
        devices=devices if kind == "neuron" else None,
    )


#: A fleet and catalogue with no problem at all: every node declared, every
#: model on two nodes, aliases to catalogued models.
FLEET = (node("a"), node("b"), node("c", 1, 24000))
MODELS = """
[[models]]
id = "big"
min_devices = 2
min_device_vram_mb = 40000

[[models]]
id = "small"

[[models]]
id = "pinned"
pinned_on = ["a", "b"]

[aliases]
"tier/big" = "big"
"tier/small" = "small"
"""


def run_lint(
    neurons: tuple[Neuron, ...] = FLEET, models: str = MODELS, policy: Policy | None = None
) -> list[Problem]:
    data = tomllib.loads(models)
    catalogue = catalogue_from_mapping(data, where="models.toml")
    return lint(
        neurons,
        catalogue,
        policy or Policy(),
        config_file="cortex.toml",
        catalogue_file="models.toml",
    )


def codes(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems}


def test_the_clean_configuration_has_no_problem() -> None:
    assert run_lint() == []


#: code -> (fleet, models): a configuration with exactly that problem, and the key.
CASES: dict[str, tuple[tuple[Neuron, ...], str, str]] = {
    "infeasible_model": (
        FLEET,
        MODELS + '\n[[models]]\nid = "huge"\nmin_devices = 4\n',
        "models[3]",
    ),
    "dangling_alias": (FLEET, MODELS + '"tier/typo" = "bgi"\n', 'aliases."tier/typo"'),
    "alias_chain": (FLEET, MODELS + '"tier/chain" = "tier/big"\n', 'aliases."tier/chain"'),
    "alias_shadows_model": (
        FLEET,
        MODELS.replace("[aliases]\n", '[aliases]\npinned = "big"\n'),
        "aliases.pinned",
    ),
    "unknown_pinned_node": (
        FLEET,
        MODELS.replace('pinned_on = ["a", "b"]', 'pinned_on = ["a", "b", "d"]'),
        "models[2].pinned_on",
    ),
    "duplicate_endpoint": (
        (*FLEET, node("d", host="a")),
        MODELS,
        "neurons[3].endpoint",
    ),
    "backend_only_model": (
        (*FLEET, node("v", kind="vllm")),
        MODELS + '\n[[models]]\nid = "huge"\nmin_devices = 4\n',
        "models[3]",
    ),
    "single_feasible_node": (
        FLEET,
        MODELS.replace('pinned_on = ["a", "b"]', 'pinned_on = ["a"]'),
        "models[2]",
    ),
    "undeclared_topology": ((*FLEET, node("d", None)), MODELS, "neurons[3]"),
}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_code_is_found_where_the_problem_is_and_nowhere_else(code: str) -> None:
    fleet, models, key = CASES[code]
    problems = run_lint(fleet, models)
    assert codes(problems) == {code}, problems
    [problem] = problems
    assert problem.key == key
    assert problem.severity == CODES[code][0]
    want_file = "cortex.toml" if key.startswith("neurons") else "models.toml"
    assert problem.file == want_file


def test_every_code_has_a_case() -> None:
    # ignored_key needs a file (the loader finds it): see test_check_cli_finds_ignored_keys.
    assert set(CASES) | {"ignored_key"} == set(CODES)


def test_undeclared_topology_says_which_checks_could_not_be_made() -> None:
    # A model that fits nowhere declared is not called infeasible while an
    # undeclared node might host it; the note names the model instead.
    fleet = (node("a", 1), node("b", 1), node("u", None))
    problems = run_lint(fleet, '[[models]]\nid = "big"\nmin_devices = 2\n')
    assert codes(problems) == {"undeclared_topology"}
    assert "whether big fits on it could not be checked" in problems[0].message
    # With every node declared it is an error, and the message says why.
    [problem] = run_lint(fleet[:2], '[[models]]\nid = "big"\nmin_devices = 2\n')
    assert problem.code == "infeasible_model"
    assert "a has 1 GPU, needs 2" in problem.message


def test_pins_decide_which_nodes_count() -> None:
    # Feasible on c by topology, but pinned on a and b, which are too small.
    fleet = (node("a", 1), node("b", 1), node("c", 4))
    models = '[[models]]\nid = "m"\nmin_devices = 2\npinned_on = ["a", "b"]\n'
    [problem] = run_lint(fleet, models)
    assert problem.code == "infeasible_model"
    assert "pinned_on excludes c" in problem.message
    # A pin on an undeclared node: not checkable, so no error.
    fleet = (node("a", 1), node("b", None))
    assert codes(run_lint(fleet, models)) == {"undeclared_topology"}


def test_backends_are_never_load_targets_and_the_warning_says_what_clients_get() -> None:
    models = '[[models]]\nid = "m"\nmin_devices = 2\n'
    fleet = (node("a", 1), node("v", kind="vllm"))
    [retry] = run_lint(fleet, models)
    assert retry.code == "backend_only_model"
    assert "503 feasible_node_unhealthy" in retry.message
    assert "vllm node(s) v" in retry.message
    [ref] = run_lint(fleet, models, Policy(known_down="reference"))
    assert "404 no_feasible_neuron" in ref.message
    # A fleet of backends only: never an error (nothing could ever load a model)...
    only = (node("v", kind="vllm"), node("o", kind="openai"))
    assert codes(run_lint(only, models)) == {"backend_only_model"}
    # ... and aliases to models they may serve are not dangling.
    assert run_lint(only, '[aliases]\nfast = "meta/llama-3-8b"\n') == []
    # One neuron that fits, and a backend: the backend is no second host for a load.
    mixed = run_lint((node("a", 4), node("v", kind="openai")), models)
    assert codes(mixed) == {"single_feasible_node"}


def test_alias_chain_to_a_catalogued_model_and_self_aliases() -> None:
    models = MODELS + '"tier/again" = "tier/small"\n"small" = "small"\n'
    problems = run_lint(FLEET, models)
    assert codes(problems) == {"alias_chain"}
    assert "(not a catalogued model)" in problems[0].message
    # An alias to an alias that is also a catalogued model: still a chain, and a shadow.
    models = MODELS + '"x" = "tier/y"\n"tier/y" = "small"\n'
    models = models.replace('id = "small"', 'id = "small"\n\n[[models]]\nid = "tier/y"')
    assert codes(run_lint(FLEET, models)) == {"alias_chain", "alias_shadows_model"}


def test_render_formats() -> None:
    fleet, models, _key = CASES["dangling_alias"]
    problems = run_lint(fleet, models) + run_lint(*CASES["undeclared_topology"][:2])
    data = json.loads(render(problems, "json"))
    assert [sorted(d) for d in data] == [["code", "file", "key", "message", "severity"]] * 2
    assert [d["code"] for d in data] == ["dangling_alias", "undeclared_topology"]
    github = render(problems, "github").splitlines()
    assert github[0].startswith("::error file=models.toml,title=cortex-fsm dangling_alias::")
    assert github[1].startswith("::notice file=cortex.toml,title=cortex-fsm undeclared_topology::")
    assert github[-1] == "cortex-fsm check: 1 error, 0 warnings, 1 note"
    text = render(problems).splitlines()
    assert text[0].startswith('models.toml: error: dangling_alias: aliases."tier/typo": ')
    assert render([]) == "no problems found\n"


# --- through files and the command line -------------------------------------------------

CONFIG = """models_config = "models.toml"

[[neurons]]
name = "a"
endpoint = "http://a.lan:13131"

[[neurons]]
name = "b"
endpoint = "http://b.lan:13131"
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex_fsm.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write(tmp_path: Path, config: str = CONFIG, models: str = MODELS) -> Path:
    (tmp_path / "models.toml").write_text(models)
    path = tmp_path / "cortex.toml"
    path.write_text(config)
    return path


def test_check_cli_exit_codes_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path)
    clean = cli("check", "--config", str(path))
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.endswith("0 errors, 0 warnings, 2 notes\n")  # a, b undeclared
    write(tmp_path, models=MODELS + '"tier/chain" = "tier/big"\n')
    bad = cli("check", "--config", str(path), "--format", "json")
    assert bad.returncode == 1
    [chain] = [p for p in json.loads(bad.stdout) if p["severity"] == "error"]
    assert chain == {
        "code": "alias_chain",
        "severity": "error",
        "file": str(tmp_path / "models.toml"),
        "key": 'aliases."tier/chain"',
        "message": chain["message"],
    }
    github = cli("check", "--config", str(path), "--format", "github")
    line = MODELS.count("\n") + 1
    assert f"::error file={tmp_path / 'models.toml'},line={line}," in github.stdout
    missing = cli("check", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert missing.stderr.strip().endswith("nope.toml: no such file")
    path.write_text(CONFIG + "[policy]\nfailure_threshold = 0\n")
    invalid = cli("check", "--config", str(path))
    assert invalid.returncode == 2
    assert "failure_threshold" in invalid.stderr
    assert len(invalid.stderr.strip().splitlines()) == 1


def test_check_cli_finds_ignored_keys(tmp_path: Path) -> None:
    path = write(tmp_path, models=MODELS.replace('id = "small"', 'id = "small"\nharnes = "x"'))
    problems = check_config(path)
    [ignored] = [p for p in problems if p.code == "ignored_key"]
    assert (ignored.key, ignored.severity, ignored.line) == ("models[1].harnes", "warning", 9)
    assert codes(problems) == {"ignored_key", "undeclared_topology"}
    assert "ignored_key" not in codes(check_config(write(tmp_path)))


def test_inline_catalogue_problems_name_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "cortex.toml"
    path.write_text(CONFIG.replace('models_config = "models.toml"\n', "") + MODELS + 'x = "y"\n')
    [dangling] = [p for p in check_config(path) if p.severity == "error"]
    assert (dangling.code, dangling.file, dangling.key) == (
        "dangling_alias",
        str(path),
        "aliases.x",
    )
    assert dangling.line == path.read_text().count("\n")


def test_serve_refuses_a_configuration_with_errors(tmp_path: Path) -> None:
    config = CONFIG.replace("[[neurons]]", '[gateway]\nlisten = "127.0.0.1:0"\n\n[[neurons]]', 1)
    path = write(tmp_path, config, MODELS + '"tier/chain" = "tier/big"\n')
    refused = cli("serve", "--config", str(path))
    assert refused.returncode == 2
    assert refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("cortex-fsm: error: refusing to start: 1 configuration error (")
    assert 'alias_chain: aliases."tier/chain"' in line
    assert "--allow-config-errors" in line
    # Allowed: it starts (and is stopped at once).
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cortex_fsm.cli",
            "serve",
            "--config",
            str(path),
            "--allow-config-errors",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "listening on " in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
