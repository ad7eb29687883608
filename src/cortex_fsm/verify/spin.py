"""Runs Spin on the generated Promela model and reads its verdicts.

Two searches of the same model:

* **safety** -- ``-DSAFETY -DNOCLAIM``: every reachable state, every
  assertion (H1-H6 and F1 after every node event, R1-R4, R6, R7 and R9 on
  every decision, under every exclusion set);
* **liveness** -- the ``live`` LTL claim (``spin -DLIVENESS``: the claim
  and its observables), acceptance cycles under weak fairness (``pan -a
  -f``); without fairness a node that never lets the client run is a
  (spurious) counterexample.

Needs ``spin`` and ``gcc`` on ``PATH`` (Debian: ``apt-get install -y spin gcc``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

__all__ = ["SpinResult", "run_spin", "spin_available"]

#: pan's search depth bound (the DFS stack): far above the depths reached.
DEPTH = 500_000


@attrs.frozen(slots=True, kw_only=True)
class SpinResult:
    name: str  # safety | liveness
    ok: bool
    errors: int
    states: int  # stored
    transitions: int
    depth: int
    seconds: float  # pan's own elapsed time
    rate: float  # states/second, as pan reports it
    memory_mb: float
    compile_seconds: float
    detail: str  # the violation, or "no error"


def spin_available() -> bool:
    return shutil.which("spin") is not None and shutil.which("gcc") is not None


def _number(pattern: str, text: str, default: float = 0.0) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default


def _parse(name: str, text: str, compile_seconds: float, returncode: int) -> SpinResult:
    errors = int(_number(r"errors: (\d+)", text, -1))
    violation = re.search(r"pan:\d+: (.+?) \(at depth", text)
    incomplete = "Search not completed" in text and errors == 0
    if errors < 0 or returncode not in (0, 1):
        detail = "pan did not finish: " + (text.strip().splitlines() or ["no output"])[-1]
        ok = False
    elif incomplete:
        detail, ok = "search not completed (raise the depth bound)", False
    else:
        detail = violation.group(1) if violation else ("no error" if errors == 0 else "error")
        ok = errors == 0
    return SpinResult(
        name=name,
        ok=ok,
        errors=max(errors, 0),
        states=int(_number(r"(\d+) states, stored", text)),
        transitions=int(_number(r"(\d+) transitions \(= stored\+matched\)", text)),
        depth=int(_number(r"depth reached (\d+)", text)),
        seconds=_number(r"elapsed time ([\d.e+-]+) seconds", text),
        rate=_number(r"rate\s+([\d.e+-]+) states/second", text),
        memory_mb=_number(r"([\d.]+)\s+total actual memory usage", text),
        compile_seconds=compile_seconds,
        detail=detail,
    )


def run_spin(model: Path, workdir: Path, *, stop_at_first: bool = False) -> list[SpinResult]:
    """Generate, compile and run the safety and the liveness search of ``model``.

    Each search has its own ``spin -a`` run: the liveness observables exist
    only under ``-DLIVENESS`` (in the safety search they would double every
    state for nothing).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    searches = {
        "safety": ([], ["-DSAFETY", "-DNOCLAIM"], [f"-m{DEPTH}"]),
        "liveness": (["-DLIVENESS"], [], ["-a", "-f", f"-m{DEPTH}"]),
    }
    start = time.perf_counter()

    def build(name: str) -> Path:
        flags, cflags, _run = searches[name]
        where = workdir / name
        where.mkdir(exist_ok=True)
        shutil.copyfile(model, where / "cortex.pml")
        subprocess.run(
            ["spin", *flags, "-a", "cortex.pml"], cwd=where, check=True, capture_output=True
        )
        subprocess.run(
            ["gcc", "-w", "-O2", *cflags, "-o", "pan", "pan.c"],
            cwd=where,
            check=True,
            capture_output=True,
        )
        return where

    with ThreadPoolExecutor(max_workers=2) as pool:
        built = dict(zip(searches, pool.map(build, searches), strict=True))
    compile_seconds = time.perf_counter() - start
    results = []
    for name, (_flags, _cflags, run) in searches.items():
        done = subprocess.run(
            ["./pan", *run],
            cwd=built[name],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        result = _parse(name, done.stdout + done.stderr, compile_seconds, done.returncode)
        results.append(result)
        if stop_at_first and not result.ok:
            break
    return results
