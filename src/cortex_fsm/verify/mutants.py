"""Teeth: deliberate bugs, applied to a copy of the package, and who catches them.

A *mutant* is a small patch to the core that reintroduces a real failure (a
missed poll evicting a healthy node, a 503 without ``Retry-After``, ...). Each
lives in ``tests/mutants/*.toml`` as exact ``old`` -> ``new`` text
replacements in files of the package. A replacement must match exactly once:
a mutant that no longer applies (because the code moved on) is an error, never
a silent skip.

:func:`kill_matrix` copies ``src/cortex_fsm`` to a temporary directory,
applies one mutant there, and runs each verification technique in a
subprocess whose ``PYTHONPATH`` puts the copy first -- the working tree is
never modified. A technique *catches* a mutant when it reports a violation
(a failing test, a counterexample, an assertion or acceptance cycle).

Run ``python -m cortex_fsm.verify.mutants`` from the repository root to print
the matrix (``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

__all__ = [
    "TECHNIQUES",
    "Edit",
    "Mutant",
    "MutantError",
    "Verdict",
    "apply_mutant",
    "copy_package",
    "kill_matrix",
    "load_mutants",
    "main",
    "render_matrix",
]

TECHNIQUES = ("model checker", "hypothesis", "crosshair", "spin")
PACKAGE = "cortex_fsm"


class MutantError(Exception):
    """A mutant file is malformed, or no longer applies to the code."""


@attrs.frozen(slots=True, kw_only=True)
class Edit:
    file: str  # relative to the package directory
    old: str
    new: str


@attrs.frozen(slots=True, kw_only=True)
class Mutant:
    name: str
    description: str
    edits: tuple[Edit, ...]
    path: str


@attrs.frozen(slots=True, kw_only=True)
class Verdict:
    """One technique on one mutant. ``caught`` is None when it could not run."""

    caught: bool | None
    detail: str
    seconds: float


def load_mutants(directory: str | os.PathLike[str]) -> list[Mutant]:
    """Every ``*.toml`` mutant in ``directory``, by file name."""
    out = []
    for path in sorted(Path(directory).glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise MutantError(f"{path}: invalid TOML: {exc}") from None
        name, description = data.get("name"), data.get("description")
        edits = data.get("edit")
        if not isinstance(name, str) or not isinstance(description, str):
            raise MutantError(f"{path}: needs string 'name' and 'description'")
        if not isinstance(edits, list) or not edits:
            raise MutantError(f"{path}: needs at least one [[edit]]")
        parsed = []
        for i, e in enumerate(edits):
            if not isinstance(e, dict) or not all(
                isinstance(e.get(k), str) for k in ("file", "old", "new")
            ):
                raise MutantError(f"{path}: edit[{i}] needs string 'file', 'old' and 'new'")
            if e["old"] == e["new"]:
                raise MutantError(f"{path}: edit[{i}] changes nothing")
            parsed.append(Edit(file=e["file"], old=e["old"], new=e["new"]))
        out.append(Mutant(name=name, description=description, edits=tuple(parsed), path=str(path)))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise MutantError(f"{directory}: two mutants share a name")
    return out


def copy_package(source: Path, destination: Path) -> Path:
    """Copy the package directory ``source`` to ``destination/cortex_fsm``."""
    target = destination / PACKAGE
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def apply_mutant(mutant: Mutant, package: Path) -> None:
    """Apply every edit of ``mutant`` to the package copy at ``package``."""
    for edit in mutant.edits:
        path = package / edit.file
        if not path.is_file():
            raise MutantError(f"mutant {mutant.name}: no file {edit.file} in the package")
        text = path.read_text(encoding="utf-8")
        count = text.count(edit.old)
        if count != 1:
            raise MutantError(
                f"mutant {mutant.name} ({mutant.path}) no longer applies: its 'old' text "
                f"occurs {count} times in {edit.file} (must be exactly once); update the mutant"
            )
        path.write_text(text.replace(edit.old, edit.new), encoding="utf-8")


# --- techniques ---------------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class Context:
    root: Path  # the repository
    copy: Path  # the directory holding the mutated package copy
    work: Path  # scratch space for this mutant
    python: str
    edited: tuple[str, ...] = ()  # the package files the mutant changes


def _env(ctx: Context, extra: Sequence[Path] = ()) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (ctx.copy, *extra))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HYPOTHESIS_PROFILE"] = "mutant"
    return env


def _run(
    argv: Sequence[str], ctx: Context, *, cwd: Path, extra: Sequence[Path] = (), timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=_env(ctx, extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check_import(ctx: Context) -> None:
    """The subprocesses must import the mutated copy, not the working tree."""
    done = _run(
        [ctx.python, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
        ctx,
        cwd=ctx.work,
        timeout=60,
    )
    where = done.stdout.strip()
    if done.returncode != 0 or not where.startswith(str(ctx.copy)):
        raise MutantError(
            f"the package copy is not what subprocesses import ({where or done.stderr.strip()})"
        )


#: The kill matrix runs the model checker on every world to at most this depth:
#: a planted bug is found within it, and a mutant that is not runs every world
#: to the end (the default bound would cost minutes per mutant).
MATRIX_DEPTH = 3

_EXPLORE = f"""
import sys
from cortex_fsm.verify.explorer import DEFAULT_WORLDS, verify
r = verify([w.with_bound(depth=min(w.depth, {MATRIX_DEPTH})) for w in DEFAULT_WORLDS], jobs=1)
if r.counterexample is None:
    print("no violation in", r.states, "states")
    sys.exit(0)
cx = r.counterexample
names = sorted({{v.invariant for v in cx.violations}})
n = len(cx.moves)
print(" ".join(names), "in world", cx.world, "after", n,
      "observation" if n == 1 else "observations")
sys.exit(1)
"""


def _model_checker(ctx: Context) -> Verdict:
    start = time.perf_counter()
    done = _run([ctx.python, "-c", _EXPLORE], ctx, cwd=ctx.work, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        return Verdict(caught=None, detail=_tail(done), seconds=seconds)
    return Verdict(caught=done.returncode == 1, detail=done.stdout.strip(), seconds=seconds)


HYPOTHESIS_TESTS = ("tests/test_stateful.py", "tests/test_invariants_traces.py")


def _hypothesis(ctx: Context) -> Verdict:
    start = time.perf_counter()
    done = _run(
        [
            ctx.python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-profile=mutant",
            *HYPOTHESIS_TESTS,
        ],
        ctx,
        cwd=ctx.root,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        return Verdict(caught=None, detail=_tail(done), seconds=seconds)
    failed = re.findall(r"^FAILED tests/(\w+)\.py", done.stdout, flags=re.MULTILINE)
    shown = {"test_stateful": "stateful", "test_invariants_traces": "traces"}
    detail = ", ".join(dict.fromkeys(shown.get(f, f) for f in failed)) or "passed"
    return Verdict(caught=done.returncode == 1, detail=detail, seconds=seconds)


def _crosshair(ctx: Context) -> Verdict:
    from .proofs import run_proofs

    start = time.perf_counter()
    # The proofs named after an edited module (routing.py: routing_proofs.py) start
    # first: only the time to a verdict changes, every proof still runs otherwise.
    first = tuple(f"{Path(f).stem}_proofs.py" for f in ctx.edited)
    outcome = run_proofs(
        ctx.root / "proofs",
        env=_env(ctx, (ctx.root / "proofs",)),
        stop_at_counterexample=True,
        first=first,
    )
    seconds = time.perf_counter() - start
    if outcome.error:
        return Verdict(caught=None, detail=outcome.error, seconds=seconds)
    refuted = outcome.refuted
    detail = ", ".join(refuted) if refuted else "every proof holds"
    return Verdict(caught=bool(refuted), detail=detail, seconds=seconds)


def _spin(ctx: Context) -> Verdict:
    from .spin import run_spin, spin_available

    start = time.perf_counter()
    if not spin_available():
        return Verdict(caught=None, detail="spin not installed", seconds=0.0)
    model = ctx.work / "model.pml"
    done = _run(
        [
            ctx.python,
            "-c",
            "import sys; from cortex_fsm.verify.promela import generate; "
            f"open({str(model)!r}, 'w').write(generate(nodes=3, threshold=3))",
        ],
        ctx,
        cwd=ctx.work,
        timeout=300,
    )
    if done.returncode != 0:
        seconds = time.perf_counter() - start
        if "AbstractionError" in done.stderr:
            # The generator checks, on every abstract input, that the code's answer
            # depends only on what the model tracks; a mutant that makes it depend
            # on node order, or makes the engine's model map depend on more than
            # the last successful poll, is refused there, before Spin runs.
            if "reverse order" in done.stderr:
                cause = "order dependence (R5)"
            elif "model map" in done.stderr:
                cause = "the model map is not what the polls said (F1)"
            else:
                cause = "abstraction"
            return Verdict(caught=True, detail=f"export refused: {cause}", seconds=seconds)
        return Verdict(caught=None, detail="export failed: " + _tail(done), seconds=seconds)
    results = run_spin(model, ctx.work / "spin", stop_at_first=True)
    seconds = time.perf_counter() - start
    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    detail = ", ".join(failed) if failed else "no error"
    return Verdict(caught=bool(failed), detail=detail, seconds=seconds)


RUNNERS: Mapping[str, Callable[[Context], Verdict]] = {
    "model checker": _model_checker,
    "hypothesis": _hypothesis,
    "crosshair": _crosshair,
    "spin": _spin,
}


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr or done.stdout).strip().splitlines()
    return f"exit {done.returncode}: " + (text[-1] if text else "no output")


# --- the matrix ---------------------------------------------------------------------------------


def run_mutant(
    mutant: Mutant, root: Path, techniques: Iterable[str], *, python: str = sys.executable
) -> dict[str, Verdict]:
    """Apply ``mutant`` to a fresh copy of the package and run each technique on it."""
    with tempfile.TemporaryDirectory(prefix=f"cortex-mutant-{mutant.name}-") as tmp:
        base = Path(tmp)
        copy_dir = base / "src"
        copy_dir.mkdir()
        package = copy_package(root / "src" / PACKAGE, copy_dir)
        apply_mutant(mutant, package)
        work = base / "work"
        work.mkdir()
        ctx = Context(
            root=root,
            copy=copy_dir,
            work=work,
            python=python,
            edited=tuple(e.file for e in mutant.edits),
        )
        _check_import(ctx)
        return {name: RUNNERS[name](ctx) for name in techniques}


def kill_matrix(
    root: Path,
    mutants: Sequence[Mutant],
    techniques: Sequence[str] = TECHNIQUES,
    *,
    jobs: int = 1,
    python: str = sys.executable,
    select: Mapping[str, Sequence[str]] | None = None,
) -> list[tuple[Mutant, dict[str, Verdict]]]:
    """Every mutant against every technique (``jobs`` mutants at a time).

    ``select`` (mutant name -> techniques) runs only those of ``techniques``
    on that mutant; the cells left out are "not run" in the rendered matrix.
    """
    for name in techniques:
        if name not in RUNNERS:
            raise ValueError(f"unknown technique {name!r} (known: {', '.join(RUNNERS)})")

    def chosen(mutant: Mutant) -> tuple[str, ...]:
        if select is None or mutant.name not in select:
            return tuple(techniques)
        return tuple(t for t in techniques if t in select[mutant.name])

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(lambda m: run_mutant(m, root, chosen(m), python=python), mutants))
    return list(zip(mutants, results, strict=True))


def render_matrix(
    rows: Sequence[tuple[Mutant, Mapping[str, Verdict]]],
    techniques: Sequence[str] = TECHNIQUES,
    *,
    details: bool = True,
) -> str:
    """The kill matrix as a Markdown table (caught: ``yes``; missed: ``-``)."""
    head = "| mutant | " + " | ".join(techniques) + " |"
    out = [head, "|---|" + "---|" * len(techniques)]
    for mutant, verdicts in rows:
        cells = []
        for name in techniques:
            v = verdicts.get(name)
            if v is None:
                cell = "not run"
            elif v.caught is None:
                cell = f"n/a ({v.detail})"
            elif v.caught:
                cell = f"yes ({v.detail})" if details and v.detail else "yes"
            else:
                cell = "-"
            cells.append(cell)
        out.append(f"| `{mutant.name}`: {mutant.description} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cortex_fsm.verify.mutants",
        description="Apply each deliberate bug of tests/mutants to a copy of the package and "
        "print which verification technique catches it.",
    )
    parser.add_argument("--root", default=".", help="the repository root (default: .)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument(
        "--technique", action="append", default=[], choices=TECHNIQUES, metavar="NAME"
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    mutants = load_mutants(root / "tests" / "mutants")
    if args.only:
        mutants = [m for m in mutants if m.name in args.only]
    techniques = tuple(args.technique) or TECHNIQUES
    start = time.perf_counter()
    rows = kill_matrix(root, mutants, techniques, jobs=args.jobs)
    sys.stdout.write(render_matrix(rows, techniques))
    print(f"\n{len(rows)} mutants in {time.perf_counter() - start:.0f} s")
    for mutant, verdicts in rows:
        for name, v in verdicts.items():
            print(f"  {mutant.name:<28} {name:<14} {v.seconds:6.1f} s  {v.detail}")
    ok = all(
        verdicts.get("model checker", Verdict(caught=True, detail="", seconds=0)).caught
        and sum(1 for v in verdicts.values() if v.caught) >= min(2, len(verdicts))
        for _m, verdicts in rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
