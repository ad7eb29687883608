"""Runs the CrossHair proofs in ``proofs/`` and reads their verdicts.

Every harness in ``proofs/*_proofs.py`` carries a PEP 316 contract (``post:
__return__``); ``crosshair check --report_all`` reports, per contract,
"Confirmed over all paths" (a proof, within the harness's bounded inputs),
"Not confirmed" (the iteration bound ran out first), or a counterexample.
``proofs/equivalence.py`` holds implementations of the health step that
``crosshair diffbehavior`` compares pairwise.

The bound is ``--max_uninteresting_iterations`` (:data:`ITERATIONS`), never a
CPU-time budget, so a result does not depend on the machine's speed; every
harness is small enough to be exhausted well within it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

__all__ = [
    "DIFFS",
    "ITERATIONS",
    "ProofResult",
    "ProofsOutcome",
    "crosshair_command",
    "proof_functions",
    "run_proofs",
]

#: CrossHair's iteration bound for every proof.
ITERATIONS = 1000

#: Pairs of functions ``crosshair diffbehavior`` must find equal (module paths
#: relative to the repository root).
DIFFS: tuple[tuple[str, str], ...] = (
    ("proofs.equivalence.via_step", "proofs.equivalence.via_table"),
    ("proofs.equivalence.via_step", "proofs.equivalence.via_if_chain"),
)

CONFIRMED = "confirmed"
NOT_CONFIRMED = "not confirmed"
COUNTEREXAMPLE = "counterexample"
ERROR = "error"


@attrs.frozen(slots=True, kw_only=True)
class ProofResult:
    name: str  # file stem and function, or "a == b" for a behaviour comparison
    status: str  # confirmed | not confirmed | counterexample | error
    detail: str
    seconds: float


@attrs.frozen(slots=True, kw_only=True)
class ProofsOutcome:
    results: tuple[ProofResult, ...]
    error: str | None = None  # could not run at all

    @property
    def refuted(self) -> list[str]:
        return [r.name for r in self.results if r.status == COUNTEREXAMPLE]

    @property
    def unconfirmed(self) -> list[str]:
        return [r.name for r in self.results if r.status != CONFIRMED]


def crosshair_command() -> list[str]:
    """How to start CrossHair: the script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "crosshair"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("crosshair")
    if found is None:
        raise FileNotFoundError("crosshair is not installed (pip install crosshair-tool)")
    return [found]


#: ``ast.parse`` is not thread-safe on CPython 3.11 before 3.11.8 (the AST
#: constructor's recursion counter is process-global, and concurrent parses
#: fail with "AST constructor recursion depth mismatch"); proofs run from
#: worker threads, both here and in the mutant kill matrix.
_AST_LOCK = threading.Lock()


def proof_functions(path: Path) -> dict[str, tuple[int, int]]:
    """Functions of a proof file that carry a ``post:`` contract -> (first, last) line."""
    source = path.read_text(encoding="utf-8")
    with _AST_LOCK:
        tree = ast.parse(source, filename=str(path))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            doc = ast.get_docstring(node) or ""
            if re.search(r"^\s*post:", doc, flags=re.MULTILINE):
                out[node.name] = (node.lineno, node.end_lineno or node.lineno)
    return out


_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<level>info|error): (?P<text>.*)$")


def _check_file(
    path: Path,
    *,
    cwd: Path,
    env: Mapping[str, str],
    iterations: int,
    function: str | None = None,
) -> list[ProofResult]:
    """``crosshair check`` one proof file (or one function of it)."""
    functions = proof_functions(path)
    if function is not None:
        functions = {function: functions[function]}
    target = str(path) if function is None else f"{path.parent.name}.{path.stem}.{function}"
    start = time.perf_counter()
    done = subprocess.run(
        [
            *crosshair_command(),
            "check",
            "--report_all",
            "--analysis_kind=PEP316",
            f"--max_uninteresting_iterations={iterations}",
            target,
        ],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.perf_counter() - start
    found: dict[str, ProofResult] = {}
    for raw in done.stdout.splitlines():
        m = _LINE.match(raw.strip())
        if m is None:
            continue
        line = int(m["line"])
        name = next((f for f, (a, b) in functions.items() if a <= line <= b), None)
        if name is None:
            continue
        text = m["text"]
        if m["level"] == "info":
            status = CONFIRMED if text.startswith("Confirmed over all paths") else NOT_CONFIRMED
        elif "when calling" in text:
            status = COUNTEREXAMPLE  # a concrete input breaks the contract (or raises)
        else:
            status = ERROR
        key = f"{path.stem}.{name}"
        previous = found.get(key)
        if previous is None or _rank(status) > _rank(previous.status):
            found[key] = ProofResult(name=key, status=status, detail=text, seconds=seconds)
    results = []
    for name in functions:
        key = f"{path.stem}.{name}"
        if key in found:
            results.append(found[key])
        else:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}, no verdict"])[-1]
            results.append(ProofResult(name=key, status=ERROR, detail=why, seconds=seconds))
    return results


def _rank(status: str) -> int:
    return {CONFIRMED: 0, NOT_CONFIRMED: 1, ERROR: 2, COUNTEREXAMPLE: 3}[status]


def _diff(
    pair: tuple[str, str], *, cwd: Path, env: Mapping[str, str], iterations: int
) -> ProofResult:
    start = time.perf_counter()
    done = subprocess.run(
        [
            *crosshair_command(),
            "diffbehavior",
            f"--max_uninteresting_iterations={iterations}",
            *pair,
        ],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.perf_counter() - start
    out = done.stdout.strip()
    name = f"{pair[0].rsplit('.', 1)[-1]} == {pair[1].rsplit('.', 1)[-1]}"
    if done.returncode == 0 and "No differences found" in out:
        status = CONFIRMED if "All paths exhausted" in out else NOT_CONFIRMED
        detail = out.splitlines()[0]
    elif done.returncode == 1:
        status, detail = COUNTEREXAMPLE, " ".join(out.split())[:300]
    else:
        status = ERROR
        detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return ProofResult(name=name, status=status, detail=detail, seconds=seconds)


#: Proof files, cheapest first (the order targets start in when looking for a
#: counterexample); the two slowest are started first for a full run instead.
_ORDER = (
    "health_proofs.py",
    "errors_proofs.py",
    "catalogue_proofs.py",
    "routing_proofs.py",
    "engine_proofs.py",
    "failover_proofs.py",
)
_SLOW_FIRST = ("failover_proofs.py", "routing_proofs.py", "engine_proofs.py")


def _position(path: Path) -> int:
    return _ORDER.index(path.name) if path.name in _ORDER else len(_ORDER)


def run_proofs(
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    jobs: int = 2,
    iterations: int = ITERATIONS,
    stop_at_counterexample: bool = False,
    first: Sequence[str] = (),
) -> ProofsOutcome:
    """Run every proof and behaviour comparison, ``jobs`` CrossHair processes at once.

    A full run checks one file per process, slowest files first. With
    ``stop_at_counterexample`` (used on mutants, where only "is it refuted?"
    matters) every proof function is its own target, cheapest first (the files
    named in ``first`` before all others), and targets not yet started are
    skipped once one is refuted.
    """
    directory = Path(directory).resolve()
    cwd = directory.parent
    environment = dict(os.environ if env is None else env)
    try:
        crosshair_command()
    except FileNotFoundError as exc:
        return ProofsOutcome(results=(), error=str(exc))
    paths = sorted(
        directory.glob("*_proofs.py"), key=lambda p: (p.name not in first, _position(p), p.name)
    )
    targets: list[tuple[Path, str | None] | tuple[str, str]] = []
    if stop_at_counterexample:
        targets += [(p, f) for p in paths for f in proof_functions(p)]
        # The behaviour comparisons are cheap: after the health, errors and
        # catalogue proofs, before the routing and engine ones.
        cheap = sum(
            1
            for t in targets
            if isinstance(t[0], Path) and (t[0].name in first or _position(t[0]) < 3)
        )
        targets[cheap:cheap] = list(DIFFS)
    else:
        slow = [p for p in paths if p.name in _SLOW_FIRST]
        slow.sort(key=lambda p: _SLOW_FIRST.index(p.name))
        targets += [(p, None) for p in slow]
        targets += [(p, None) for p in paths if p.name not in _SLOW_FIRST]
        targets += list(DIFFS)
    refuted = False

    def one(target: tuple[Path, str | None] | tuple[str, str]) -> list[ProofResult]:
        nonlocal refuted
        if stop_at_counterexample and refuted:
            return []
        first, second = target
        if isinstance(first, Path):
            results = _check_file(
                first, cwd=cwd, env=environment, iterations=iterations, function=second
            )
        else:
            assert isinstance(second, str)
            results = [_diff((first, second), cwd=cwd, env=environment, iterations=iterations)]
        if any(r.status == COUNTEREXAMPLE for r in results):
            refuted = True
        return results

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        batches = list(pool.map(one, targets))
    return ProofsOutcome(results=tuple(r for batch in batches for r in batch))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cortex_fsm.verify.proofs",
        description="Run the CrossHair proofs (proofs/) and print each verdict.",
    )
    parser.add_argument("--dir", default="proofs", help="the proofs directory (default proofs)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    outcome = run_proofs(Path(args.dir), jobs=args.jobs, iterations=args.iterations)
    if outcome.error:
        print(f"error: {outcome.error}", file=sys.stderr)
        return 2
    for r in outcome.results:
        print(f"{r.status:<15} {r.name:<45} {r.seconds:6.1f} s  {r.detail[:100]}")
    print(f"{len(outcome.results)} proofs in {time.perf_counter() - start:.1f} s")
    return 0 if not outcome.unconfirmed else 1


if __name__ == "__main__":
    sys.exit(main())
