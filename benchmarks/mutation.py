"""Mutation score of the core: cosmic-ray, with ``verify`` alone and with the tests.

Mutates ``health.py``, ``routing.py``, ``engine.py``, ``catalogue.py``,
``wire.py``, ``errors.py`` and ``policy.py`` with every operator cosmic-ray
has (no operator is switched off), one mutant at a time, in a copy of the
repository (cosmic-ray edits the files it mutates in place; the working tree
is never touched), and runs a test command against each:

``--mode verify``
    the model checker alone: every world of the default bound, at depth
    ``min(depth, --depth)`` (default 3), deepened one level at a time (every
    world at depth 1, then 2, ...), stopping at the first violation. A
    mutant is *killed* when the checker reports a violation, crashes, or
    exceeds a CPU limit of four times the unmutated run.
``--mode suite``
    the whole test suite, in tiers (:func:`suite_tiers`: the fast tests of
    the core first, the slow verification checks last), each ``pytest -x``;
    ``--tiers N`` runs only the first N (a lower bound of the suite's score).

A seeded, stratified sample (``--sample`` of the decision and health logic,
``--sample-other`` of the rest, ``--seed``) can stand for all the mutants;
the report then gives a 95 % interval. ``--recheck`` (verify mode) runs
``cortex-fsm verify``'s default bound, judged as its command line judges it
(worlds cheapest first, so a kill costs seconds), on the
survivors of the smaller bound that have no recorded reason; the report
counts those it kills in a "default bound" column.

Before anything runs, two kinds of mutant are set aside, mechanically:

* **equivalent by construction**: the mutation lies inside an annotation.
  Every mutated module starts with ``from __future__ import annotations``
  (checked), so annotations are strings that nothing in the package
  evaluates; such a mutant cannot change behaviour.
* **not executed** (``verify`` mode): no line of the statement holding the
  mutation ran when the test command ran on the unmutated code (measured
  with coverage). The test command is deterministic, so such a mutant
  survives; it is reported as a survivor without spending a run on it.

Every survivor is printed, and each must have a reason in
``benchmarks/mutation_survivors.toml`` (equivalent -- and why --, outside the
logic the command judges, or a gap, closed or open); the script exits 1 when
one has none, so a new survivor cannot go unexplained. docs/verification.md
("Mutation score") gives the measured numbers and every survivor.

Usage (from the repository root; slow -- run it at low priority)::

    nice -n 19 python benchmarks/mutation.py --mode verify --workdir DIR \
        --sample 150 --sample-other 60 --seed 13
    nice -n 19 python benchmarks/mutation.py --mode verify --workdir DIR --recheck 0
    nice -n 19 python benchmarks/mutation.py --mode suite --workdir DIR2 --tiers 1 \
        --sample 20 --sample-other 10 --seed 13
    python benchmarks/mutation.py --mode verify --workdir DIR --report   # print again

A ``--workdir`` keeps the session (a cosmic-ray SQLite database): running the
same command again resumes where it stopped.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cortex_fsm"
#: The modules mutated, in the package.
FILES: tuple[str, ...] = (
    "health.py",
    "routing.py",
    "engine.py",
    "catalogue.py",
    "wire.py",
    "errors.py",
    "policy.py",
)
#: The tool, pinned (the ``mutation`` extra of pyproject.toml).
TOOL = "cosmic-ray"
TOOL_VERSION = "8.7.0"
REASONS = ROOT / "benchmarks" / "mutation_survivors.toml"
#: ``--mode suite`` runs the whole test suite in tiers, each ``pytest -x``, the
#: next only when the one before passed (so a mutant costs the tests up to the
#: first that fails): first the fast tests of the core, then every other test
#: file, those of the core's direct users first and the slow verification
#: checks last. A mutant survives only if every test of the suite passes.
SUITE_FIRST: tuple[str, ...] = (
    "tests/test_health.py",
    "tests/test_routing.py",
    "tests/test_engine.py",
    "tests/test_catalogue.py",
    "tests/test_wire.py",
    "tests/test_invariants.py",
    "tests/test_tables_check.py",
    "tests/test_stateful.py",
    "tests/test_invariants_traces.py",
)
#: Test files run last (slowest), in this order, after every other file.
SUITE_LAST: tuple[str, ...] = (
    "tests/test_explorer.py",
    "tests/test_promela.py",
    "tests/test_mutants.py",
    "tests/test_proofs.py",
)


def suite_tiers(root: Path) -> list[list[str]]:
    """The tiers of ``--mode suite``: every ``test_*.py`` under ``tests/`` once."""
    every = sorted(p.relative_to(root).as_posix() for p in (root / "tests").rglob("test_*.py"))
    first = [t for t in SUITE_FIRST if t in every]
    last = [t for t in SUITE_LAST if t in every]
    middle = [t for t in every if t not in first and t not in last]
    # the core's direct users (top level) before the drivers and the research code
    middle.sort(key=lambda t: (t.count("/"), t))
    return [first, middle, last]


DEFAULT_DEPTH = 3
#: Wall-clock limit per mutant given to cosmic-ray (a backstop: the test
#: commands limit their own CPU time, and the machine may be busy).
WALL_TIMEOUT = 3600.0

# --- the test commands, written into the work directory -----------------------------------------

#: A mutant whose module no longer compiles is no mutant (cosmic-ray makes a
#: few, e.g. ``*`` of a keyword-only marker turned into ``<<``): both test
#: commands check first, and say so with this prefix.
_INVALID = ("invalid:", "crash: import: SyntaxError")
_SYNTAX_CHECK = """
import pathlib
for _f in {files!r}:
    try:
        compile(pathlib.Path(_f).read_text(encoding="utf-8"), _f, "exec")
    except SyntaxError as _exc:
        print("invalid: the mutated module does not compile:", _exc, flush=True)
        raise SystemExit(0)
"""

_VERIFY_TEST = '''\
"""The test command of --mode verify (written by benchmarks/mutation.py)."""
import resource, signal, sys, time
{syntax_check}
HERE = {here!r}
CPU_LIMIT = {cpu_limit}
DEPTH = {depth}


def _timeout(signum, frame):
    print("timeout: more than", CPU_LIMIT, "CPU seconds", flush=True)
    sys.exit(4)


if CPU_LIMIT:
    signal.signal(signal.SIGXCPU, _timeout)
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT + 30))
try:
    import cortex_fsm
    if not cortex_fsm.__file__.startswith(HERE):
        print("wrong package imported:", cortex_fsm.__file__, flush=True)
        sys.exit(2)
    from cortex_fsm.verify.explorer import DEFAULT_WORLDS, verify
except Exception as exc:  # a mutant that breaks the import
    print("crash: import:", type(exc).__name__, str(exc)[:200], flush=True)
    sys.exit(3)
# cheapest worlds first; every world one level deeper at a time
worlds = sorted(DEFAULT_WORLDS, key=lambda w: (len(w.node_moves) * len(w.names)) ** 2)
start = time.process_time()
for depth in range(1, DEPTH + 1):
    try:
        result = verify([w.with_bound(depth=min(w.depth, depth)) for w in worlds], jobs=1)
    except Exception as exc:
        print("crash:", type(exc).__name__, str(exc)[:200], "at depth", depth, flush=True)
        sys.exit(3)
    cx = result.counterexample
    if cx is not None:
        names = sorted({{v.invariant for v in cx.violations}})
        print("violation:", " ".join(names), "in world", cx.world, "after", len(cx.moves),
              "observation(s), bound depth", depth, flush=True)
        sys.exit(1)
print("survived:", result.states, "states,", round(time.process_time() - start, 1), "CPU s")
sys.exit(0)
'''

_SUITE_TEST = '''\
"""The test command of --mode suite (written by benchmarks/mutation.py).

A mutant that does not compile is reported as such. Each tier is one
``pytest -x``. When a test fails, it is run again alone: if it then passes
(a test that fails only now and then on a loaded machine), it is deselected
and the tier runs again, at most twice; a test that fails again alone kills
the mutant."""
import resource, signal, subprocess, sys
{syntax_check}
CPU_LIMIT = {cpu_limit}
TIERS = {tiers!r}
# started in the background, SIGINT may be ignored, and that is inherited:
# the tests that interrupt a server they start need it back
signal.signal(signal.SIGINT, signal.SIG_DFL)
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
          "--hypothesis-profile=mutant"]
if CPU_LIMIT:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT + 30))


def run(args):
    done = subprocess.run([*PYTEST, *args], capture_output=True, text=True, check=False)
    return done.returncode, [l for l in done.stdout.splitlines() if l.strip()]


for i, tests in enumerate(TIERS, 1):
    deselected = []
    while True:
        code, lines = run(["-x", *tests, *(a for d in deselected for a in ("--deselect", d))])
        if code == 0:
            print("tier", i, "passed:", lines[-1] if lines else "",
                  *("(flaky, deselected: " + " ".join(deselected) + ")" for _ in deselected[:1]),
                  flush=True)
            break
        failed = [l.split()[1] for l in lines
                  if l.startswith(("FAILED", "ERROR")) and len(l.split()) > 1]
        if len(failed) == 1 and "::" in failed[0] and len(deselected) < 2:
            again, _ = run([failed[0]])
            if again == 0:
                deselected.append(failed[0])
                continue
        print("killed by tier", i, "(exit", str(code) + "):", *(failed or lines[-3:]), flush=True)
        sys.exit(1)
sys.exit(0)
'''


def _write_commands(work: Path, mode: str, depth: int, cpu_limit: int, tiers: int = 3) -> str:
    syntax_check = _SYNTAX_CHECK.format(files=_module_paths(FILES))
    if mode == "verify":
        script = _VERIFY_TEST.format(
            here=str(work / "src" / PACKAGE),
            cpu_limit=cpu_limit,
            depth=depth,
            syntax_check=syntax_check,
        )
        name = "verify_test.py"
    else:
        script = _SUITE_TEST.format(
            cpu_limit=cpu_limit, tiers=suite_tiers(work)[:tiers], syntax_check=syntax_check
        )
        name = "suite_test.py"
    (work / name).write_text(script, encoding="utf-8")
    return f"{sys.executable} {name}"


# --- the work directory ------------------------------------------------------------------------


def _prepare(work: Path, mode: str) -> None:
    """A copy of what the test command needs: the package (and, for the suite,
    every file of the repository that git does not ignore: the tests read
    docs, examples, benchmarks, models and proofs)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src" / PACKAGE, work / "pristine", ignore=ignore)
    if mode == "verify":
        shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
        return
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)


def _pristine(work: Path) -> Path:
    """The unmutated modules: cosmic-ray applies each mutant in place in the
    work directory's copy, so positions are read from a second copy."""
    kept = work / "pristine"
    return kept if kept.is_dir() else ROOT / "src" / PACKAGE


def _module_paths(files: Sequence[str]) -> list[str]:
    return [f"src/{PACKAGE}/{f}" for f in files]


def _config(work: Path, files: Sequence[str], command: str) -> Path:
    paths = ", ".join(json.dumps(p) for p in _module_paths(files))
    text = (
        "[cosmic-ray]\n"
        f"module-path = [{paths}]\n"
        f"timeout = {WALL_TIMEOUT}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    path = work / "cosmic-ray.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work / "src") + (
        os.pathsep + str(work) if (work / "tests").is_dir() else ""
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HYPOTHESIS_PROFILE"] = "mutant"
    return env


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def check_tool() -> str:
    """The installed cosmic-ray's version; an error unless it is the pinned one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        got = version(TOOL)
    except PackageNotFoundError:
        raise SystemExit(
            f"{TOOL} is not installed: pip install -e '.[mutation]' (pins {TOOL}=={TOOL_VERSION})"
        ) from None
    if got != TOOL_VERSION:
        raise SystemExit(f"{TOOL} {got} is installed; this script is measured with {TOOL_VERSION}")
    return got


# --- the mutants, as source positions ------------------------------------------------------------


class Source:
    """One mutated module: its lines, annotation spans, statements, definitions."""

    def __init__(self, path: Path) -> None:
        self.text = path.read_text(encoding="utf-8")
        self.lines = self.text.splitlines()
        tree = ast.parse(self.text)
        if not any(
            isinstance(n, ast.ImportFrom)
            and n.module == "__future__"
            and any(a.name == "annotations" for a in n.names)
            for n in tree.body
        ):
            raise SystemExit(f"{path}: no 'from __future__ import annotations'")
        self.annotations: list[tuple[tuple[int, int], tuple[int, int]]] = []
        self.statements: list[tuple[int, int, int]] = []  # (first, header end, depth)
        self.definitions: list[tuple[int, int, str]] = []  # (first, last, qualified name)
        self._walk(tree.body, "", 0)

    def _span(self, node: ast.AST) -> None:
        start = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = (node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        self.annotations.append((start, end))

    def _walk(self, body: Iterable[ast.stmt], prefix: str, depth: int) -> None:
        for node in body:
            end = node.end_lineno or node.lineno
            children = [
                getattr(node, f) for f in ("body", "orelse", "finalbody") if getattr(node, f, None)
            ]
            children += [h.body for h in getattr(node, "handlers", [])]
            children += [c.body for c in getattr(node, "cases", [])]
            header_end = end
            if children:
                header_end = min(c[0].lineno for c in children) - 1
            first = node.lineno
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                first = min([first, *(d.lineno for d in node.decorator_list)])
            self.statements.append((node.lineno, max(node.lineno, header_end), depth))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + node.name
                self.definitions.append((first, end, name))
                args = node.args
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                    if a is not None and a.annotation is not None:
                        self._span(a.annotation)
                if node.returns is not None:
                    self._span(node.returns)
                self._walk(node.body, name + ".", depth + 1)
                continue
            if isinstance(node, ast.ClassDef):
                name = prefix + node.name
                self.definitions.append((first, end, name))
                self._walk(node.body, name + ".", depth + 1)
                continue
            if isinstance(node, ast.AnnAssign):
                self._span(node.annotation)
            if not prefix and isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                names += [
                    e.id
                    for t in targets
                    if isinstance(t, ast.Tuple)
                    for e in t.elts
                    if isinstance(e, ast.Name)
                ]
                if names:
                    self.definitions.append((node.lineno, end, names[0]))
            for child in children:
                self._walk(child, prefix, depth + 1)

    def in_annotation(self, start: tuple[int, int], end: tuple[int, int]) -> bool:
        return any(a <= start and end <= b for a, b in self.annotations)

    def definition(self, row: int) -> str:
        best = ""
        best_size = None
        for first, last, name in self.definitions:
            if first <= row <= last and (best_size is None or last - first < best_size):
                best, best_size = name, last - first
        return best or "<module>"

    def statement(self, row: int) -> tuple[int, int] | None:
        """The innermost statement whose header holds ``row`` (None: not inside a
        statement header -- decorators, module level: treated as executed)."""
        found = None
        for first, header_end, depth in self.statements:
            if first <= row <= header_end and (found is None or depth > found[2]):
                found = (first, header_end, depth)
        return None if found is None else (found[0], found[1])


class Mutant:
    __slots__ = (
        "_mutated",
        "definition",
        "diff",
        "end",
        "file",
        "job_id",
        "key",
        "line",
        "occurrence",
        "operator",
        "outcome",
        "output",
        "source",
        "start",
    )

    def __init__(
        self,
        job_id: str,
        file: str,
        operator: str,
        *,
        start: tuple[int, int],
        end: tuple[int, int],
        source: Source,
        occurrence: int = 0,
    ) -> None:
        self.job_id = job_id
        self.source = source
        self.occurrence = occurrence
        self._mutated: str | None = None
        self.file = file
        self.operator = operator.split("/", 1)[-1]
        self.start = start
        self.end = end
        self.line = source.lines[start[0] - 1].strip()
        self.definition = source.definition(start[0])
        self.key = ""
        self.outcome = "pending"
        self.output = ""
        self.diff = ""

    @property
    def mutated(self) -> str:
        """The mutated source line (stripped): from the diff once the mutant
        ran, else made by applying the mutation to the source in memory."""
        if self._mutated is None:
            added = [
                line[1:].strip()
                for line in self.diff.splitlines()
                if line.startswith("+") and not line.startswith("+++")
            ]
            if not added:
                from cosmic_ray.mutating import mutate_code
                from cosmic_ray.plugins import get_operator

                code = mutate_code(
                    self.source.text, get_operator(f"core/{self.operator}")(), self.occurrence
                )
                lines = (code or "").splitlines()
                row = self.start[0] - 1
                added = [lines[row].strip()] if row < len(lines) else []
            self._mutated = added[0] if added else ""
        return self._mutated

    @property
    def where(self) -> str:
        return f"{self.file}:{self.start[0]}"


def load_mutants(session: Path, work: Path) -> list[Mutant]:
    """Every mutant of the session, with its outcome so far."""
    import sqlite3

    sources = {f: Source(_pristine(work) / f) for f in FILES if (_pristine(work) / f).exists()}
    con = sqlite3.connect(session)
    try:
        specs = con.execute(
            "select job_id, module_path, operator_name, start_pos_row, start_pos_col, "
            "end_pos_row, end_pos_col, occurrence from mutation_specs"
        ).fetchall()
        results = {
            r[0]: r[1:]
            for r in con.execute(
                "select job_id, worker_outcome, test_outcome, output, diff from work_results"
            )
        }
    finally:
        con.close()
    out = []
    for job_id, module, operator, r0, c0, r1, c1, occurrence in specs:
        file = Path(module).name
        m = Mutant(
            job_id,
            file,
            operator,
            start=(r0, c0),
            end=(r1, c1),
            source=sources[file],
            occurrence=occurrence,
        )
        res = results.get(job_id)
        if res is not None:
            worker, test, output, diff = res
            worker, test = (worker or "").lower(), (test or "").lower()
            m.output = output or ""
            m.diff = diff or ""
            if worker == "skipped":
                m.outcome = m.output.split(":", 1)[0]  # equivalent / not executed / not sampled
            elif worker == "no_test" or m.output.startswith(_INVALID):
                m.outcome = "invalid"  # no mutant: not applied, or not Python
            elif worker == "normal":
                m.outcome = test  # killed / survived / incompetent
            else:
                m.outcome = "error"
        out.append(m)
    # A key that survives unrelated edits: file, operator, the line's text, and the
    # ordinal among mutants with the same three.
    out.sort(key=lambda m: (m.file, m.start, m.end, m.operator))
    seen: Counter[tuple[str, str, str]] = Counter()
    for m in out:
        base = (m.file, m.operator, m.line)
        m.key = f"{m.file} | {m.operator} | {m.line} | {seen[base]}"
        seen[base] += 1
    return out


# --- setting mutants aside before the run ------------------------------------------------------


def _executed_lines(work: Path, command: str) -> dict[str, set[int]]:
    """The lines of each mutated module that ran under ``command`` (unmutated)."""
    data_file = work / ".coverage-baseline"
    argv = command.split()
    done = subprocess.run(
        [argv[0], "-m", "coverage", "run", f"--data-file={data_file}", *argv[1:]],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the unmutated run fails under coverage:\n{done.stdout}\n{done.stderr}")
    from coverage import CoverageData

    data = CoverageData(basename=str(data_file))
    data.read()
    out = {}
    for f in FILES:
        lines = data.lines(str((work / "src" / PACKAGE / f).resolve()))
        out[f] = set(lines or ())
    return out


def set_aside(session: Path, work: Path, mode: str, command: str) -> None:
    """Mark equivalent-by-construction, not-executed and not-sampled mutants skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    mutants = load_mutants(session, work)
    sources = {f: Source(_pristine(work) / f) for f in FILES}
    executed = _executed_lines(work, command) if mode == "verify" else None
    skip: dict[str, str] = {}
    for m in mutants:
        if m.outcome != "pending":
            continue
        src = sources[m.file]
        if src.in_annotation(m.start, m.end):
            skip[m.job_id] = "equivalent: inside an annotation (never evaluated)"
            continue
        if executed is not None:
            stmt = src.statement(m.start[0])
            if stmt is not None and not any(
                row in executed[m.file] for row in range(stmt[0], stmt[1] + 1)
            ):
                skip[m.job_id] = f"not executed: lines {stmt[0]}-{stmt[1]} never ran"
    with use_db(str(session), WorkDB.Mode.open) as db:
        for job_id, why in skip.items():
            db.set_result(job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=why))


def sample(session: Path, work: Path, *, target: int, other: int, seed: int) -> None:
    """Keep a seeded random sample of the mutants to run, stratified: ``target``
    of the decision and health logic, ``other`` of the rest (0: all of them);
    the others are marked ``not sampled``. Each stratum, in a fixed order (file,
    position, operator), is shuffled with ``seed`` and its first ``target``
    (``other``) mutants are kept, so the same seed draws the same mutants, and
    a larger sample with the same seed holds the smaller one (running again
    with a larger ``--sample`` only adds mutants)."""
    import sqlite3

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    con = sqlite3.connect(session)
    try:
        con.execute("delete from work_results where output like 'not sampled:%'")
        con.commit()
    finally:
        con.close()
    candidates = [
        m for m in load_mutants(session, work) if m.outcome not in ("equivalent", "not executed")
    ]
    drop: list[str] = []
    for wanted, group in (
        (target, [m for m in candidates if in_target(m)]),
        (other, [m for m in candidates if not in_target(m)]),
    ):
        order = list(group)
        random.Random(seed).shuffle(order)
        if wanted and wanted < len(order):
            drop += [m.job_id for m in order[wanted:] if m.outcome == "pending"]
    with use_db(str(session), WorkDB.Mode.open) as db:
        for job_id in drop:
            db.set_result(
                job_id,
                WorkResult(
                    worker_outcome=WorkerOutcome.SKIPPED, output=f"not sampled: seed {seed}"
                ),
            )


def defer(session: Path, work: Path, only: Sequence[str]) -> None:
    """Run only the mutants of ``only`` (files) this time: the others still
    pending are marked ``deferred`` (and unmarked by the next run)."""
    import sqlite3

    con = sqlite3.connect(session)
    try:
        con.execute("delete from work_results where output like 'deferred:%'")
        con.commit()
    finally:
        con.close()
    if not only:
        return
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    later = [
        m.job_id
        for m in load_mutants(session, work)
        if m.outcome == "pending" and m.file not in only
    ]
    with use_db(str(session), WorkDB.Mode.open) as db:
        for job_id in later:
            db.set_result(
                job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="deferred: --only")
            )


# --- reasons for survivors ----------------------------------------------------------------------

#: What a survivor can be. ``equivalent``: no input of any kind tells it from
#: the original. ``outside``: the mutation is in code the test command does
#: not judge (configuration reading, reporting, messages) -- a survivor, and
#: counted as one. ``gap``: a real change of behaviour that the test command
#: does not catch; the reason says whether it is closed or open. A verify-mode
#: survivor that ``--recheck`` found killed at the default bound needs no
#: reason: the report counts it as ``bound`` (killed by the default bound).
CATEGORIES = ("equivalent", "outside", "gap")


def load_reasons(path: Path = REASONS) -> list[dict[str, str]]:
    """The survivor reasons: each entry matches mutants by ``file``, ``definition``
    and ``operator`` (shell patterns), and optionally ``line`` (the stripped
    source line), ``mutated`` (the stripped mutated line; patterns too) and
    ``mode``."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, entry in enumerate(data.get("survivor", [])):
        for key in ("file", "category", "reason"):
            if not isinstance(entry.get(key), str):
                raise SystemExit(f"{path}: survivor[{i}] needs a string {key!r}")
        if entry["category"] not in CATEGORIES:
            raise SystemExit(f"{path}: survivor[{i}]: category must be one of {CATEGORIES}")
        out.append(entry)
    return out


def reason_for(
    m: Mutant, mode: str, reasons: Sequence[Mapping[str, str]]
) -> Mapping[str, str] | None:
    for r in reasons:
        if r.get("mode", mode) != mode:
            continue
        if not fnmatch.fnmatchcase(m.file, r["file"]):
            continue
        if not fnmatch.fnmatchcase(m.definition, r.get("definition", "*")):
            continue
        if not fnmatch.fnmatchcase(m.operator, r.get("operator", "*")):
            continue
        if not fnmatch.fnmatchcase(m.line, r.get("line", "*")):
            continue
        if "mutated" in r and not fnmatch.fnmatchcase(m.mutated, r["mutated"]):
            continue
        return r
    return None


# --- the report ---------------------------------------------------------------------------------

#: The decision and health logic (the 90 % target): the code that computes a
#: health state or a decision, or that the engine runs on an observation or a
#: request. That is every definition of routing.py; of health.py all but the
#: python-statemachine expression of the table (a second rendering of
#: TRANSITIONS that only the table checks use) and text made for people
#: (repr, identifiers, messages); of engine.py all but the reporting values
#: and accessors, input type checks, eviction (section 5) and reconfiguration.
NOT_DECISION: dict[str, tuple[str, ...]] = {
    "health.py": (
        "HealthModel*",
        "chart_definition",
        "health_chart_class",
        "chart_state",
        "_shown",
        "Guard.text",
        "HealthState.ident",
        "HealthState.__repr__",
    ),
    "routing.py": (),
    "engine.py": (
        "Transition*",
        "NodeStatus*",
        "Statistics*",
        "Engine.statistics",
        "Engine.status",
        "_wrong_type",
        "Engine.eviction_candidate",
        "Engine.reconfigure",
    ),
}


def in_target(m: Mutant) -> bool:
    if m.file not in NOT_DECISION:
        return False
    return not any(fnmatch.fnmatchcase(m.definition, p) for p in NOT_DECISION[m.file])


_RAN = ("killed", "survived", "incompetent", "invalid")
#: z for a 95 % two-sided interval
_Z = 1.959963984540054


def wilson(k: int, n: int, z: float = _Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (n > 0)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


class Estimate:
    """The score of a set of mutants of one stratum, estimated from what ran.

    ``annotation`` mutants are equivalent by construction; ``unexecuted`` were
    never executed by the test command (survivors; ``unexecuted_eq`` of them
    argued equivalent, ``unexecuted_bound`` killed by the default bound); of
    the ``rest``, ``ran`` were run (all, or a seeded random sample): ``invalid``
    of them were no mutant (the module did not compile), ``killed`` killed,
    and of the ones that survived ``survived_eq`` were argued equivalent and
    ``survived_bound`` killed by the default bound. The rest not run count as
    the sample does (x rest/ran). ``default``: count the "bound" survivors as
    killed (the score of ``cortex-fsm verify`` at its default bound)."""

    def __init__(
        self, ms: Sequence[Mutant], equivalent: set[str], bound: set[str], *, default: bool
    ) -> None:
        self.total = len(ms)
        self.annotation = sum(1 for m in ms if m.outcome == "equivalent")
        unexecuted = [m for m in ms if m.outcome == "not executed"]
        self.unexecuted = len(unexecuted)
        self.unexecuted_eq = sum(1 for m in unexecuted if m.job_id in equivalent)
        self.unexecuted_bound = sum(1 for m in unexecuted if m.job_id in bound)
        rest = [m for m in ms if m.outcome not in ("equivalent", "not executed")]
        self.rest = len(rest)
        ran = [m for m in rest if m.outcome in _RAN]
        self.ran = len(ran)
        self.invalid = sum(1 for m in ran if m.outcome == "invalid")
        self.killed = sum(1 for m in ran if m.outcome == "killed")
        survived = [m for m in ran if m.outcome not in ("killed", "invalid")]
        self.survived = len(survived)
        self.survived_eq = sum(1 for m in survived if m.job_id in equivalent)
        self.survived_bound = sum(1 for m in survived if m.job_id in bound)
        self.default = default

    @property
    def known(self) -> bool:
        return self.ran > 0 or self.rest == 0

    def _killed(self) -> tuple[int, int]:
        """(killed among those run, killed among the never executed)."""
        if self.default:
            return self.killed + self.survived_bound, self.unexecuted_bound
        return self.killed, 0

    def parts(self, p: float | None = None) -> tuple[float, float]:
        """(killed, non-equivalent), estimated; ``p`` replaces the sample's
        kill rate among its non-equivalent mutants (for the interval)."""
        scale = self.rest / self.ran if self.ran else 0.0
        rest_live = (self.ran - self.invalid - self.survived_eq) * scale
        ran_killed, unexecuted_killed = self._killed()
        killed = ran_killed * scale if p is None else p * rest_live
        return killed + unexecuted_killed, self.unexecuted - self.unexecuted_eq + rest_live

    def interval(self) -> tuple[float, float] | None:
        """95 % interval of the score when only a sample ran (Wilson, on the
        sample's kill rate among its non-equivalent mutants; the number of
        equivalent and invalid mutants among those not run is taken as
        estimated)."""
        live = self.ran - self.invalid - self.survived_eq
        if self.ran == self.rest or live <= 0:
            return None
        lo, hi = wilson(self._killed()[0], live)
        out = []
        for p in (lo, hi):
            killed, base = self.parts(p)
            out.append(100.0 * killed / base if base > 0 else 100.0)
        return out[0], out[1]


def _score(est: Sequence[Estimate]) -> str:
    if not est or not all(e.known for e in est):
        return "-"
    killed = sum(e.parts()[0] for e in est)
    base = sum(e.parts()[1] for e in est)
    shown = f"{100.0 * killed / base if base > 0 else 100.0:.1f} %"
    sampled = [e for e in est if e.interval() is not None]
    if len(est) == 1 and sampled:
        lo, hi = sampled[0].interval()  # type: ignore[misc]
        shown += f" ({lo:.1f}-{hi:.1f})"
    elif sampled:
        shown += " (est.)"
    return shown


def _row(
    groups: Sequence[Sequence[Mutant]], equivalent: set[str], bound: set[str], mode: str
) -> str:
    """One row of the table (the mutants of each stratum in ``groups``) and its
    score: estimated killed / estimated non-equivalent ("-": nothing ran yet),
    with a 95 % interval when it is one sampled stratum; in verify mode, the
    score of the default bound too."""
    est = [Estimate(ms, equivalent, bound, default=False) for ms in groups if ms]
    cells = [
        sum(e.total for e in est),
        sum(e.annotation for e in est),
        f"{sum(e.unexecuted for e in est)} ({sum(e.unexecuted_eq for e in est)})",
        f"{sum(e.ran for e in est)} of {sum(e.rest for e in est)}",
        sum(e.invalid for e in est),
        sum(e.killed for e in est),
        f"{sum(e.survived for e in est)} ({sum(e.survived_eq for e in est)})",
        _score(est),
    ]
    if mode == "verify":
        cells.append(_score([Estimate(ms, equivalent, bound, default=True) for ms in groups if ms]))
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _rechecked(work: Path) -> dict[str, str]:
    """What ``--recheck`` measured: job id -> "killed ..." / "survived ..."."""
    store = work / "recheck.json"
    data: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    return data


def report(session: Path, work: Path, mode: str, out: Any = sys.stdout) -> int:
    mutants = load_mutants(session, work)
    reasons = load_reasons()
    pending = [m for m in mutants if m.outcome in ("pending", "deferred", "error")]
    survivors = [m for m in mutants if m.outcome in ("survived", "not executed", "incompetent")]
    equivalent: set[str] = set()
    bound: set[str] = set()
    unexplained = []
    explained: dict[str, Mapping[str, str]] = {}
    rechecked = _rechecked(work) if mode == "verify" else {}
    for m in survivors:
        said = rechecked.get(m.job_id, "")
        r = (
            {"category": "bound", "reason": "killed by `cortex-fsm verify` at its default bound"}
            if said.startswith("killed")
            else reason_for(m, mode, reasons)
        )
        if r is None:
            unexplained.append(m)
            continue
        explained[m.job_id] = r
        if r["category"] == "equivalent":
            equivalent.add(m.job_id)
        elif r["category"] == "bound":
            bound.add(m.job_id)
    outcomes = Counter(m.outcome for m in mutants)
    w = out.write
    w(f"# mutation score, --mode {mode} ({TOOL} {TOOL_VERSION})\n\n")
    w("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + "\n\n")
    head = (
        "| scope | mutants | in annotations | never executed (equivalent) | ran | not Python "
        "| killed | survived (equivalent) | score |"
    )
    if mode == "verify":
        head += " default bound |"
    w(head + "\n" + "|---" * (head.count("|") - 1) + "|\n")

    def strata(ms: Sequence[Mutant]) -> list[list[Mutant]]:
        return [[m for m in ms if in_target(m)], [m for m in ms if not in_target(m)]]

    rows: list[tuple[str, list[list[Mutant]]]] = [
        ("decision and health logic", strata(mutants)[:1]),
        ("the rest", strata(mutants)[1:]),
    ]
    rows += [(f, strata([m for m in mutants if m.file == f])) for f in FILES]
    rows.append(("all", strata(mutants)))
    for name, groups in rows:
        if any(groups):
            w(f"| {name} {_row(groups, equivalent, bound, mode)}\n")
    w(
        "\nscore = killed / (mutants - equivalent). With a sample, the mutants not run "
        "count as the sample of their stratum does (decision and health logic, the rest), "
        "and the interval is 95 % (Wilson) on the sample's kill rate (see Estimate)."
    )
    if pending:
        w(f" {len(pending)} mutants still to run (scores are partial).")
    w("\n\n## survivors\n\n")
    by_reason: dict[str, list[Mutant]] = defaultdict(list)
    for m in survivors:
        r = explained.get(m.job_id)
        label = "UNEXPLAINED" if r is None else f"{r['category']}: {r['reason']}"
        by_reason[label].append(m)
    order = ("UNEXPLAINED", "gap", "bound", "outside", "equivalent")
    for label, ms in sorted(
        by_reason.items(), key=lambda kv: (order.index(kv[0].split(":")[0]), kv[0])
    ):
        target = sum(1 for m in ms if in_target(m))
        w(f"- **{label}** ({len(ms)}, {target} of the decision and health logic)\n")
        lines: dict[tuple[str, int], list[Mutant]] = defaultdict(list)
        for m in ms:
            lines[m.file, m.start[0]].append(m)
        for _where, group in sorted(lines.items()):
            m = group[0]
            extra = ", never executed" if all(g.outcome == "not executed" for g in group) else ""
            into = sorted({g.mutated[:60] for g in group if g.mutated})
            shown = "; ".join(f"`{t}`" for t in into[:4]) + (" ..." if len(into) > 4 else "")
            w(f"  - `{m.where}` {m.definition}: `{m.line[:70]}` -> {shown} ({len(group)}{extra})\n")
    if unexplained:
        w(f"\n{len(unexplained)} survivor(s) without a reason in {REASONS.name}\n")
        return 1
    return 0


# --- the bound: does the default bound kill what the smaller one lets live? ---------------------

#: ``cortex-fsm verify`` at its default bound, as its command line judges it
#: (a violation, a crash or a coverage gap: exit 1), with one difference that
#: changes no verdict: the worlds run cheapest first, so a mutant that a small
#: world kills costs seconds instead of the whole bound. A survivor still
#: explores every world of the default bound.
_DEFAULT_BOUND = (
    "import sys\n"
    "from cortex_fsm.verify.commands import _gaps, render_result\n"
    "from cortex_fsm.verify.explorer import DEFAULT_WORLDS, _weight, verify\n"
    "worlds = sorted(DEFAULT_WORLDS, key=_weight)\n"
    "result = verify(worlds, jobs=1, stop_at_first=True)\n"
    "sys.stdout.write(render_result(result, require_coverage=True, worlds=worlds))\n"
    "sys.exit(1 if not result.ok or _gaps(result) else 0)\n"
)


#: CPU seconds a mutant may take at the default bound (about 90 s unmutated).
RECHECK_CPU_LIMIT = 600


def _cpu_limit(seconds: int) -> Any:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 30))

    return limit


def recheck(session: Path, work: Path, *, limit: int, only_target: bool, seed: int) -> int:
    """Run ``cortex-fsm verify``'s DEFAULT bound (judged as its command line
    judges it: violations, crashes and its coverage check; worlds cheapest
    first) on every mutant that survived the
    smaller bound of ``--mode verify`` and is not argued equivalent in
    ``mutation_survivors.toml`` (of the decision and health logic with
    ``only_target``; a seeded random ``limit`` of them, 0: all), one at a time in a copy of the
    package, and print which it kills. A mutant killed at the smaller bound is
    killed at the default one too (every world's default depth is larger, so
    it explores a superset of the states); only survivors can differ.
    Results are kept in ``recheck.json`` (resumable)."""
    import sqlite3

    from cosmic_ray.mutating import apply_mutation
    from cosmic_ray.plugins import get_operator

    con = sqlite3.connect(session)
    try:
        occurrence = {
            r[0]: (r[1], r[2], r[3])
            for r in con.execute(
                "select job_id, module_path, operator_name, occurrence from mutation_specs"
            )
        }
    finally:
        con.close()
    store = work / "recheck.json"
    done: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    reasons = load_reasons()
    # Only survivors without a recorded reason are rerun: one argued
    # equivalent, outside or a gap of every bound cannot be killed at the
    # default bound either, and one recorded as "bound" has been. A mutant
    # never executed at the smaller bound may be executed at the default one.
    survivors = [
        m
        for m in load_mutants(session, work)
        if m.outcome in ("survived", "incompetent", "not executed")
        and (in_target(m) or not only_target)
        and reason_for(m, "verify", reasons) is None
    ]
    # a seeded random order: a run stopped part way has rerun a random subset
    random.Random(seed).shuffle(survivors)
    if limit:
        survivors = survivors[:limit]
    copy = work / "recheck"
    if copy.exists():
        shutil.rmtree(copy)
    # the unmutated modules the session was made from (cosmic-ray may be
    # running in the work directory's copy, with a mutant applied in place)
    shutil.copytree(
        _pristine(work), copy / "src" / PACKAGE, ignore=shutil.ignore_patterns("__pycache__")
    )
    env = dict(os.environ, PYTHONPATH=str(copy / "src"), PYTHONDONTWRITEBYTECODE="1")
    for m in survivors:
        if m.job_id in done:
            continue
        module, operator, occ = occurrence[m.job_id]
        target = copy / module
        original = target.read_bytes()
        try:
            apply_mutation(target, get_operator(operator)(), occ)
            t0 = time.perf_counter()
            run = subprocess.run(
                [sys.executable, "-c", _DEFAULT_BOUND],
                preexec_fn=_cpu_limit(RECHECK_CPU_LIMIT),
                cwd=copy,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            target.write_bytes(original)
        lines = [line.strip() for line in run.stdout.splitlines() if line.strip()]
        said = [
            line for line in lines if line.startswith(("FAIL", "counterexample in", "not reached"))
        ]
        said = said or (lines + run.stderr.strip().splitlines())[-1:] or [""]
        verdict = "survived" if run.returncode == 0 else f"killed (exit {run.returncode})"
        done[m.job_id] = f"{verdict}: " + "; ".join(x[:100] for x in said[:4])
        store.write_text(json.dumps(done, indent=1), encoding="utf-8")
        print(
            f"{m.where} {m.definition} {m.operator}: {done[m.job_id]}"
            f" [{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    by_id = {m.job_id: m for m in survivors}
    killed = [j for j, v in done.items() if j in by_id and v.startswith("killed")]
    print(
        f"default bound: {len(killed)} of {len([j for j in done if j in by_id])} survivors killed"
    )
    for j in killed:
        m = by_id[j]
        print(
            f"  KILLED at the default bound only: {m.where} {m.definition} {m.operator}: {m.line}"
        )
    return 0


# --- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("verify", "suite"), default="verify")
    parser.add_argument("--workdir", help="keep the session here (resumable)")
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH)
    parser.add_argument(
        "--tiers",
        type=int,
        default=3,
        choices=(1, 2, 3),
        help="--mode suite: run only the first N tiers of the suite (3: all of it)",
    )
    parser.add_argument(
        "--sample", type=int, default=0, help="mutants of the decision and health logic to run"
    )
    parser.add_argument("--sample-other", type=int, default=0, help="mutants of the rest to run")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--cpu-limit", type=int, default=0, help="CPU s per mutant (0: 4x the unmutated run)"
    )
    parser.add_argument("--files", nargs="*", default=list(FILES))
    parser.add_argument("--only", nargs="*", default=[], help="run only these files' mutants now")
    parser.add_argument("--plan", action="store_true", help="set mutants aside, then stop")
    parser.add_argument("--report", action="store_true", help="only print the report")
    parser.add_argument(
        "--recheck",
        type=int,
        default=-1,
        metavar="N",
        help="--mode verify: run the default bound on (at most N, 0: all) survivors, then stop",
    )
    parser.add_argument(
        "--recheck-all",
        action="store_true",
        help="with --recheck: survivors outside the target too",
    )
    args = parser.parse_args(argv)
    check_tool()
    tmp = None
    if args.workdir:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="cortex-mutation-")
        work = Path(tmp.name)
    session = work / "session.sqlite"
    config = work / "cosmic-ray.toml"
    try:
        if args.report:
            return report(session, work, args.mode)
        if args.recheck >= 0:
            return recheck(
                session, work, limit=args.recheck, only_target=not args.recheck_all, seed=args.seed
            )
        start = time.perf_counter()
        if not session.exists():
            if not (work / "src").exists():
                _prepare(work, args.mode)
            command = _write_commands(work, args.mode, args.depth, 0, args.tiers)
            baseline = time.process_time()
            t0 = os.times()
            done = subprocess.run(
                command.split(),
                cwd=work,
                env=_env(work),
                check=False,
                capture_output=True,
                text=True,
            )
            t1 = os.times()
            cpu = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
            if done.returncode != 0:
                raise SystemExit(
                    f"the unmutated code fails the test command:\n{done.stdout}{done.stderr}"
                )
            print(f"unmutated run: {cpu:.1f} CPU s ({done.stdout.strip()[-200:]})", flush=True)
            del baseline
            limit = args.cpu_limit or max(60, int(4 * cpu))
            command = _write_commands(work, args.mode, args.depth, limit, args.tiers)
            _config(work, args.files, command)
            subprocess.run(
                [_tool("cosmic-ray"), "init", str(config), str(session)], cwd=work, check=True
            )
            set_aside(session, work, args.mode, command)
            print(f"planned in {time.perf_counter() - start:.0f} s", flush=True)
        if args.sample or args.sample_other:
            sample(session, work, target=args.sample, other=args.sample_other, seed=args.seed)
        if args.plan:
            return report(session, work, args.mode)
        defer(session, work, args.only)
        # a run stopped by a signal leaves its mutant applied: start clean
        if (work / "pristine").is_dir():
            for f in FILES:
                shutil.copy2(work / "pristine" / f, work / "src" / PACKAGE / f)
        subprocess.run(
            [_tool("cosmic-ray"), "exec", str(config), str(session)],
            cwd=work,
            env=_env(work),
            check=True,
        )
        print(f"ran in {time.perf_counter() - start:.0f} s", flush=True)
        return report(session, work, args.mode)
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
