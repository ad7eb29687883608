"""Synthetic traces for the benchmarks: a fleet polled every 10 s, with requests.

Deterministic (seeded). Each poll round every node answers ``/models`` (about
2% of polls fail, a few nodes have longer outages) and ``/health``; between
rounds, requests arrive for a mix of loaded, unloaded, catalogued-but-cold,
aliased and unknown models.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path


def _models_body(node: int, models: list[str], statuses: list[str]) -> list[dict[str, object]]:
    return [
        {"id": m, "harness": "candle", "status": s, "devices": [0], "vram_used_mb": 4000}
        for m, s in zip(models, statuses, strict=True)
    ]


def events(nodes: int, total: int, seed: int = 7) -> Iterator[dict[str, object]]:
    """Yield the header, then ``total`` events for a fleet of ``nodes``."""
    rng = random.Random(seed)
    names = [f"node-{i:03d}" for i in range(nodes)]
    # Every node holds three models; each model sits on about three nodes.
    catalogue_models = [f"org/Model-{i}" for i in range(max(4, nodes))]
    catalogue = {
        "models": [
            {
                "id": m,
                "harness": "candle",
                "min_devices": 1 + (i % 3 == 0),
                "min_device_vram_mb": 24000 if i % 2 else None,
            }
            for i, m in enumerate(catalogue_models)
        ],
        "aliases": {f"tier/{i}": m for i, m in enumerate(catalogue_models[:4])},
    }
    for p in catalogue["models"]:
        if p["min_device_vram_mb"] is None:
            del p["min_device_vram_mb"]
    yield {
        "kind": "header",
        "format": "cortex-fsm-trace",
        "version": 1,
        "policy": {"failure_threshold": 3},
        "neurons": [{"name": n, "endpoint": f"http://{n}.lan:13131"} for n in names],
        "catalogue": catalogue,
    }
    count = len(catalogue_models)
    placed = {n: [catalogue_models[(j + r) % count] for r in range(3)] for j, n in enumerate(names)}
    emitted = 0
    t = 0.0
    for name in names:
        gpus = 1 + (hash(name) % 2)
        yield {
            "kind": "discovery",
            "t": t,
            "node": name,
            "ok": True,
            "body": {
                "hostname": name,
                "os": "Linux",
                "kernel": "7.0",
                "devices": [
                    {
                        "index": d,
                        "name": "GPU",
                        "vram_total_mb": 24000 + 8000 * d,
                        "compute_capability": "9.0",
                    }
                    for d in range(gpus)
                ],
                "harnesses": ["candle"],
                "max_prompt_tokens": 32768,
            },
        }
        emitted += 1
    outage: dict[str, int] = {}
    status = {n: ["loaded"] * len(placed[n]) for n in names}
    request_models = [*catalogue_models[:50], *[f"tier/{i}" for i in range(4)], "org/Unknown"]
    rid = 0
    while emitted < total:
        for name in names:
            if emitted >= total:
                return
            left = outage.get(name, 0)
            if left == 0 and rng.random() < 0.003:
                left = outage[name] = rng.randint(1, 5)
            if left or rng.random() < 0.02:
                if left:
                    outage[name] = left - 1
                yield {"kind": "models", "t": t, "node": name, "ok": False, "error": "timeout"}
                emitted += 1
                continue
            models = placed[name]
            # a model's status changes now and then (1% of polls), not every poll
            statuses = status[name]
            for k in range(len(statuses)):
                if rng.random() < 0.01:
                    statuses[k] = "unloaded" if statuses[k] == "loaded" else "loaded"
            yield {
                "kind": "models",
                "t": t,
                "node": name,
                "ok": True,
                "body": _models_body(0, models, statuses),
            }
            yield {
                "kind": "health",
                "t": t,
                "node": name,
                "ok": True,
                "body": {
                    "uptime_secs": int(t),
                    "devices": [],
                    "models": [
                        {"id": m, "in_flight": rng.randint(0, 4), "queue_depth": rng.randint(0, 2)}
                        for m in models
                    ],
                },
            }
            emitted += 2
            # requests arrive between polls
            for _ in range(2):
                rid += 1
                yield {
                    "kind": "request",
                    "t": t,
                    "id": f"r{rid}",
                    "model": rng.choice(request_models),
                }
                emitted += 1
        t += 10.0


def write_trace(path: Path, nodes: int, total: int) -> int:
    """Write a synthetic trace; returns the number of lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    lines = 0
    with opener(path, "wt", encoding="utf-8") as fh:  # type: ignore[operator]
        for obj in events(nodes, total):
            fh.write(json.dumps(obj) + "\n")
            lines += 1
    return lines
