"""How long ``cortex-fsm verify --config`` takes on a ten-node, five-model fleet.

The fleet: four nodes of 2x80 GB, three of 1x24 GB, two of 4x48 GB and one
1x24 GB node a model is pinned on (four classes, kept as seven nodes), five
models, two aliases, the default policy. Runs the default depth and each
depth given, and prints states, transitions, CPU and wall seconds (CPU is
the steadier figure on a shared machine; wall is what a CI job waits).

Usage: python benchmarks/verify_config_bench.py [--depth D]...
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cortex_fsm.ci.worlds import DEFAULT_DEPTH, verify_config


def _node(name: str, gpus: int, vram: int) -> str:
    return (
        f'[[neurons]]\nname = "{name}"\nendpoint = "http://{name}.lan:13131"\n'
        f"gpus = {gpus}\nvram_mb = {vram}\n\n"
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models.toml").write_text(MODELS)
        path = Path(tmp) / "cortex.toml"
        path.write_text(CONFIG)
        print("| depth | states | transitions | complete | CPU s | wall s |")
        print("|---|---|---|---|---|---|")
        for depth in [DEFAULT_DEPTH, *args.depth]:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            out = verify_config(path, depth=depth)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            assert out.ok, out.result.counterexample
            r = out.result
            print(
                f"| {depth} | {r.states:,} | {r.transitions:,} | {r.complete} | {cpu:.1f} | "
                f"{wall:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
