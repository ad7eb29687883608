"""docs/ci.md: the GitHub Actions job and the pre-commit hook it shows run
commands that exist, with options that exist -- and the job's steps pass on a
sound repository and fail on a broken one."""

from __future__ import annotations

import gzip
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cortex_fsm.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
YAML = re.findall(r"```yaml\n(.*?)```", DOC, re.DOTALL)


def _commands(key: str) -> list[str]:
    return [
        m.strip()
        for block in YAML
        for m in re.findall(rf"^\s*-?\s*{key}: (cortex-fsm .*)$", block, re.MULTILINE)
    ]


def test_the_documented_commands_parse() -> None:
    runs, entries = _commands("run"), _commands("entry")
    assert len(runs) == 3 and len(entries) == 3
    for command in [*runs, *entries]:
        argv = shlex.split(command)[1:]
        if argv == ["audit"]:
            argv.append("recordings/a.jsonl")  # pre-commit passes the file names
        _parser().parse_args(argv)  # exits 2 on an unknown option


def _repository(tmp_path: Path, models: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "recordings").mkdir(parents=True)
    (repo / "cortex.toml").write_text(
        'models_config = "models.toml"\n\n[[neurons]]\nname = "a"\n'
        'endpoint = "http://a.lan:13131"\ngpus = 1\nvram_mb = 24000\n\n'
        '[[neurons]]\nname = "b"\nendpoint = "http://b.lan:13131"\ngpus = 1\nvram_mb = 24000\n'
    )
    (repo / "models.toml").write_text(models)
    shutil.copy(ROOT / "examples" / "two-gpu-blip.jsonl", repo / "recordings" / "blip.jsonl")
    with (repo / "recordings" / "blip.jsonl").open("rb") as fh:
        (repo / "recordings" / "blip.jsonl.gz").write_bytes(gzip.compress(fh.read()))
    return repo


def _steps(repo: Path) -> list[int]:
    codes = []
    for command in _commands("run"):
        argv = shlex.split(command)
        argv = [str(p) for a in argv for p in (sorted(repo.glob(a)) if "*" in a else [a])]
        result = subprocess.run(
            [sys.executable, "-m", "cortex_fsm.cli", *argv[1:]],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        codes.append(result.returncode)
    return codes


def test_the_documented_job_passes_a_sound_repository_and_fails_a_broken_one(
    tmp_path: Path,
) -> None:
    sound = '[[models]]\nid = "m"\n\n[aliases]\n"tier/m" = "m"\n'
    assert _steps(_repository(tmp_path / "sound", sound)) == [0, 0, 0]
    broken = sound + '"tier/chain" = "tier/m"\n'
    repo = _repository(tmp_path / "broken", broken)
    assert _steps(repo) == [1, 1, 0]
    assert (repo / "counterexample.jsonl").is_file()
