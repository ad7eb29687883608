"""Sweeps: re-simulate a scenario at every point of a grid, score each run.

Every (grid point, seed) is an independent task: the scenario with the
point's values, simulated with that seed and scored as it runs (no trace is
written). Because every random process has its own stream (see
:mod:`.processes`), all points of one seed see the same outages, blips and
arrivals: common random numbers, so the differences between points are the
policy's. Tasks run in this process (``workers=1``), on local worker
processes, or on a Dask cluster; the rows come back in grid order whatever
the order of completion, so the results are identical everywhere.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, CortexError
from .scenario import Scenario, scenario_from_mapping, with_assignments
from .score import SCORE_KEYS, Judge
from .simulate import simulate

__all__ = [
    "Task",
    "pareto_front",
    "plot",
    "run_task",
    "score_scenario",
    "sweep",
    "tasks",
    "write_rows",
]

Task = tuple[dict[str, object], int]  # (grid point values, seed)


class MissingExtra(CortexError):
    """An optional dependency of the research extra is not installed."""


def need(module: str, purpose: str) -> Any:
    """Import ``module`` or explain which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".", maxsplit=1)[0]
        raise MissingExtra(
            f"{purpose} needs {package}: pip install 'cortex-fsm[research]'"
        ) from None


def score_scenario(scenario: Scenario) -> dict[str, Any]:
    """Simulate ``scenario`` and score it as it runs (no trace is written)."""
    judge = Judge([n.name for n in scenario.neurons], scenario.catalogue, scenario.policy)
    simulate(scenario, listen=judge.feed)
    return judge.result()


def tasks(grid: Sequence[tuple[str, Sequence[object]]], seeds: Sequence[int]) -> list[Task]:
    """Every (point, seed), points in grid order (the last key varies fastest)."""
    keys = [k for k, _ in grid]
    points = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in grid))
    ]
    return [(point, seed) for point in points for seed in seeds]


def run_task(
    data: Mapping[str, object],
    source: str,
    base_dir: str | None,
    point: dict[str, object],
    seed: int,
) -> dict[str, object]:
    """One tidy row: the point's values, the seed, then the score keys.

    Takes the scenario as its parsed TOML (plain data: cheap to ship to a
    worker process or a Dask worker, which validate it again).
    """
    base = scenario_from_mapping(
        data, where=source, base_dir=None if base_dir is None else Path(base_dir)
    )
    scenario = with_assignments(base, point).with_seed(seed)
    score = score_scenario(scenario)
    row: dict[str, object] = dict(point)
    row["seed"] = seed
    for key in SCORE_KEYS:
        row[key] = score[key]
    return row


def _progress(total: int, stream: IO[str] | None) -> Callable[[int], None]:
    if stream is None or not stream.isatty():
        return lambda done: None
    width = 30

    def show(done: int) -> None:
        filled = width * done // total if total else width
        end = "\n" if done == total else ""
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs{end}")
        stream.flush()

    show(0)
    return show


def sweep(
    scenario: Scenario,
    grid: Sequence[tuple[str, Sequence[object]]],
    *,
    seeds: int = 1,
    workers: int | None = None,
    dask: str | None = None,
    progress: IO[str] | None = None,
) -> list[dict[str, object]]:
    """The rows of the sweep, in grid order then seed order.

    ``dask``: ``"local"`` for a ``LocalCluster`` on this machine, or the
    address of a running scheduler (``tcp://host:8786``). Else ``workers``
    local processes (default: one per core; 1 runs in this process).
    Every grid point is validated before any run starts.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be an integer >= 1, got {seeds}")
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise ConfigError("--grid: a key is given twice")
    base_seed = scenario.run.seed
    todo = tasks(grid, [base_seed + i for i in range(seeds)])
    for point, _ in todo[::seeds]:
        with_assignments(scenario, point)  # raises on a bad value, before any work
    args = [
        (dict(scenario.data), scenario.source, scenario.base_dir, point, seed)
        for point, seed in todo
    ]
    show = _progress(len(args), progress)
    results: list[dict[str, object] | None] = [None] * len(args)
    if dask is not None:
        for i, row in _dask_map(dask, args, workers):
            results[i] = row
            show(sum(r is not None for r in results))
    elif (workers or os.cpu_count() or 1) <= 1 or len(args) == 1:
        for i, a in enumerate(args):
            results[i] = run_task(*a)
            show(i + 1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=context) as pool:
            futures = {pool.submit(run_task, *a): i for i, a in enumerate(args)}
            for done, future in enumerate(as_completed(futures), 1):
                results[futures[future]] = future.result()
                show(done)
    return [r for r in results if r is not None]


def _dask_map(
    address: str, args: list[tuple[Any, ...]], workers: int | None
) -> Iterator[tuple[int, dict[str, object]]]:
    distributed = need("distributed", "--dask")
    with contextlib.ExitStack() as stack:
        if address == "local":
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(distributed.Client(cluster))
        else:
            try:
                client = stack.enter_context(distributed.Client(address, timeout="10s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(f"--dask {address}: cannot reach the scheduler: {exc}") from None
        futures = [client.submit(run_task, *a, pure=False) for a in args]
        index = {f.key: i for i, f in enumerate(futures)}
        for future in distributed.as_completed(futures):
            yield index[future.key], future.result()


# --- output ----------------------------------------------------------------------------------


def columns(grid_keys: Sequence[str]) -> list[str]:
    return [*grid_keys, "seed", *SCORE_KEYS]


def write_rows(rows: Sequence[Mapping[str, object]], grid_keys: Sequence[str], path: str) -> None:
    """Tidy output: ``.csv`` (no extra needed) or ``.parquet`` (polars).

    The file appears only when complete.
    """
    from ..trace import AtomicOutput

    cols = columns(grid_keys)
    if path.endswith(".parquet"):
        polars = need("polars", "writing parquet")
        frame = polars.DataFrame(
            [{c: r.get(c) for c in cols} for r in rows], infer_schema_length=None
        )
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            frame.write_parquet(tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    if not path.endswith(".csv"):
        raise ConfigError(f"-o {path}: the results file must end in .csv or .parquet")
    with AtomicOutput(path) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(cols)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else _cell(r.get(c)) for c in cols])


def _cell(value: object) -> object:
    if isinstance(value, float):
        return repr(value)
    return value


# --- the trade-off plot ------------------------------------------------------------------------


def means(
    rows: Sequence[Mapping[str, object]], grid_keys: Sequence[str], keys: Sequence[str]
) -> list[tuple[dict[str, object], dict[str, float]]]:
    """Per grid point, the mean of ``keys`` over its seeds (None values skipped)."""
    out: list[tuple[dict[str, object], dict[str, float]]] = []
    seen: dict[tuple[str, ...], int] = {}
    sums: list[dict[str, list[float]]] = []
    for r in rows:
        point = {k: r[k] for k in grid_keys}
        ident = tuple(repr(point[k]) for k in grid_keys)
        if ident not in seen:
            seen[ident] = len(out)
            out.append((point, {}))
            sums.append({k: [] for k in keys})
        acc = sums[seen[ident]]
        for k in keys:
            value = r.get(k)
            if isinstance(value, int | float) and not isinstance(value, bool):
                acc[k].append(float(value))
    for (_, mean), acc in zip(out, sums, strict=True):
        for k in keys:
            values = acc[k]
            mean[k] = sum(values) / len(values) if values else math.nan
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indexes of the points no other point beats on both axes (lower is better),
    sorted by x. NaN points are never on the front."""
    order = sorted(
        (i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))),
        key=lambda i: (points[i][0], points[i][1], i),
    )
    front: list[int] = []
    best_y = math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def _label(point: Mapping[str, object]) -> str:
    short = {"failure_threshold": "T", "poll_interval": "P"}
    return " ".join(f"{short.get(k, k)}={v}" for k, v in point.items())


def plot(
    rows: Sequence[Mapping[str, object]],
    grid_keys: Sequence[str],
    path: str,
    *,
    x: str = "false_evictions",
    y: str = "routed_to_down",
    title: str = "",
) -> list[dict[str, object]]:
    """Write a PNG of ``y`` against ``x`` (means over seeds), one point per grid
    point, the Pareto front (lower is better on both) marked. Returns the front."""
    for key in (x, y):
        if key not in SCORE_KEYS:
            raise ConfigError(f"--plot: {key!r} is not a score key ({', '.join(SCORE_KEYS)})")
    matplotlib = need("matplotlib", "--plot")
    matplotlib.use("Agg")
    plt = need("matplotlib.pyplot", "--plot")
    data = means(rows, grid_keys, [x, y])
    xy = [(m[x], m[y]) for _, m in data]
    front = pareto_front(xy)
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=28, color="#8aa4c8", label="policy")
    fx = [xy[i][0] for i in front]
    fy = [xy[i][1] for i in front]
    ax.plot(
        fx, fy, "-o", color="#c0392b", markersize=8, label="Pareto front", drawstyle="steps-post"
    )
    # Points at the same place share one label.
    labels: dict[tuple[float, float], list[int]] = {}
    for i, (px, py) in enumerate(xy):
        if not (math.isnan(px) or math.isnan(py)):
            labels.setdefault((px, py), []).append(i)
    for where, members in labels.items():
        ax.annotate(
            ", ".join(_label(data[i][0]) for i in members),
            where,
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
            color="#c0392b" if any(i in front for i in members) else "#444444",
        )
    for values, scale in (([p[0] for p in xy], ax.set_xscale), ([p[1] for p in xy], ax.set_yscale)):
        finite = [v for v in values if not math.isnan(v)]
        if finite and min(finite) >= 0 and max(finite) > 50 * max(1.0, min(finite)):
            scale("symlog", linthresh=1.0)  # counts from 0 to thousands: keep the small ones apart
    ax.set_xlabel(f"{x} (mean over seeds; lower is better)")
    ax.set_ylabel(f"{y} (mean over seeds; lower is better)")
    ax.set_title(title or f"{y} against {x}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.png")
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None})
        os.replace(tmp, target)
    finally:
        plt.close(fig)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return [{**data[i][0], x: xy[i][0], y: xy[i][1]} for i in front]
