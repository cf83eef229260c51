"""ROLLOUT: N running read-only clones moved to another gold slot in waves, verify as gate.

    python bench/bench_rollout.py [--clones N]

Setup as bench_migrate.py (its functions): a site with the gold in slots 1 and 2, N
read-only clones on slot 1, all started and ready. Then, each through the CLI and timed
from `rollout start` to the rollout's end (`rollout show` polled every second):

- `rollout start <N> --slot 2 --wave-size 1`: every clone alone, one after the other
  (migrate --reboot, then verify, per clone), as a rollout without waves would go;
- `rollout start <N> --slot 1 --wave-size N`: the canary alone, then the other N-1 in one
  wave, one `migrate --parallel N-1` and their verifies at once.

Both must end `succeeded` with every clone on the target slot and logged on. The ratio
is the sequential rollout's wall time over the waved one's. Under TCG a wave's guests
share the host's cores, so a wave of K is not K times faster than K clones in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench_migrate import (
    GUEST_MIB,
    SHAREDROOT,
    _terminate,
    boot_all,
    check_slot,
    clone_names,
    mem_available_mib,
    setup,
    stop_all,
)

ENDED = ("succeeded", "failed", "aborted")


def rollout(home: Path, guests: list[str], slot: int, wave: int) -> tuple[float, dict[str, object]]:
    """One rollout from start to end: wall time, and its last view."""
    t = time.perf_counter()
    started = subprocess.run(
        [SHAREDROOT, "--home", str(home), "--json", "rollout", "start", *guests,
         "--slot", str(slot), "--wave-size", str(wave)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rid = str(json.loads(started.stdout)["id"])
    while True:
        shown = subprocess.run(
            [SHAREDROOT, "--home", str(home), "--json", "rollout", "show", rid],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        view: dict[str, object] = json.loads(shown.stdout)
        if view["state"] in ENDED:
            return time.perf_counter() - t, view
        time.sleep(1)


def bench(n: int) -> None:
    if n < 2:
        raise SystemExit("--clones: at least 2 (a canary and a wave)")
    if n * GUEST_MIB + 1024 > mem_available_mib():
        raise SystemExit(f"{n} guests need {n * GUEST_MIB} MiB; {mem_available_mib()} available")
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        home = Path(tmp) / "site"
        guests = clone_names(n)
        try:
            print(f"setup ({n} clones x {GUEST_MIB} MiB, {os.cpu_count()} cores)")
            setup(home, n)
            boot_all(home, guests)
            walls: dict[int, float] = {}
            for slot, wave in ((2, 1), (1, n)):
                walls[wave], view = rollout(home, guests, slot, wave)
                if view["state"] != "succeeded":
                    raise RuntimeError(f"rollout to slot {slot}: {view['state']}: {view}")
                check_slot(home, guests, slot)
                waves = [len(w["clones"]) for w in view["waves"]]  # type: ignore[index,union-attr]
                print(f"  rollout --slot {slot} --wave-size {wave:<3} {walls[wave]:7.1f}s"
                      f"  {walls[wave] / n:6.1f}s per clone, waves of {waves}")  # fmt: skip
            print(f"  waves of {n} (canary, then {n - 1} side by side) against one clone at a"
                  f" time: {walls[1] / walls[n]:.2f}x faster")  # fmt: skip
        finally:
            stop_all(home, guests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clones", type=int, default=4, help="read-only clones (4)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    bench(args.clones)


if __name__ == "__main__":
    main()
