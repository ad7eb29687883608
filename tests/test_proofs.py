"""The CrossHair proofs: every contract in proofs/ is confirmed over all paths,
and the health step's implementations behave identically."""

from __future__ import annotations

import time

from tests.verify_support import ROOT

from cortex_fsm.verify.proofs import DIFFS, ITERATIONS, proof_functions, run_proofs

PROOFS = ROOT / "proofs"


def test_every_proof_is_confirmed_over_all_paths() -> None:
    start = time.perf_counter()
    outcome = run_proofs(PROOFS, jobs=2)
    seconds = time.perf_counter() - start
    assert outcome.error is None, outcome.error
    expected = {
        f"{path.stem}.{name}"
        for path in PROOFS.glob("*_proofs.py")
        for name in proof_functions(path)
    }
    diffs = {f"{a.rsplit('.', 1)[-1]} == {b.rsplit('.', 1)[-1]}" for a, b in DIFFS}
    seen = {r.name for r in outcome.results}
    assert seen == expected | diffs, seen ^ (expected | diffs)
    assert len(expected) >= 12
    for r in outcome.results:
        print(f"{r.status:<15} {r.name:<45} {r.seconds:5.1f} s  {r.detail[:70]}")
    print(
        f"{len(outcome.results)} proofs, --max_uninteresting_iterations={ITERATIONS}, "
        f"{seconds:.1f} s"
    )
    assert outcome.unconfirmed == [], [
        (r.name, r.status, r.detail) for r in outcome.results if r.status != "confirmed"
    ]


def test_every_proof_file_holds_only_harnesses_with_contracts() -> None:
    """A harness without `post:` would never be checked: each public function
    of a proof file must carry one."""
    import ast

    for path in PROOFS.glob("*_proofs.py"):
        tree = ast.parse(path.read_text())
        public = [
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
        ]
        assert sorted(public) == sorted(proof_functions(path)), path.name


_CONCURRENT_PARSES = """
import gc, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from cortex_fsm.verify.proofs import proof_functions

# Force thread switches inside the AST constructor: frequent switching, and
# garbage collections that run a finalizer (which yields the GIL).
sys.setswitchinterval(1e-6)
gc.set_threshold(50, 1, 1)

class Cycle:
    def __del__(self):
        time.sleep(0)

def parse_many(path):
    for _ in range(200):
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        del a, b
        proof_functions(path)
    return 1

path = Path(sys.argv[1])
with ThreadPoolExecutor(8) as pool:
    print(sum(pool.map(parse_many, [path] * 8)))
"""


def test_proof_functions_is_safe_from_many_threads() -> None:
    """The proofs are read from worker threads (run_proofs, the kill matrix);
    CPython 3.11 before 3.11.8 corrupts concurrent ``ast.parse`` calls
    ("AST constructor recursion depth mismatch") unless they are serialised."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CONCURRENT_PARSES, str(PROOFS / "health_proofs.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "8"
