#!/usr/bin/env python3
"""A/B of executor builds with the e2e bench: the builds run alternately, pair after pair, so
that the VM's speed, which moves from minute to minute, falls on both alike.

    python3 benches/ab.py --pairs 6 OLD_BINARY NEW_BINARY [more binaries]

Each run is `cargo bench --bench e2e` with `E2E_BIN` set to one build (the bench binary itself
is the same for all). Printed per run: durable runs/s, the executor's CPU per run, the bench
process's, their ratio, the VM's steal; then per build the means. Compare builds by the ratio:
on this project's VM runs/s of one build spread 17,000-25,000/s while the ratio spread 3.5 %
(benches/README.md, Session 12). Keep the default load (`E2E_RUNS` 50,000): with a few
thousand runs the bench process's fixed costs weigh on the ratio. Outputs are kept in --out
(default target/ab).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

FIELDS = {
    "runs/s": r"durable \(default\): /run .*?\(accepted -> callback acknowledged\) (\d+) runs/s",
    "cpu": r"durable \(default\): executor CPU (\d+) µs per run",
    "bench": r"durable \(default\): this process \(client and fake admin\) CPU (\d+) µs per run",
    "ratio": r"durable \(default\): executor CPU per run relative to this process's: ([\d.]+)",
    "steal": r"durable \(default\): this process .*? (\d+) ms stolen",
    "ceiling": r"bare warp ceiling \(same client\): (\d+)/s",
}


def parse(text):
    out = {}
    for name, pattern in FIELDS.items():
        m = re.search(pattern, text)
        out[name] = float(m.group(1)) if m else None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6, help="rounds of all builds (at most 50)")
    ap.add_argument("--out", default="target/ab", help="where each run's output is kept")
    ap.add_argument("builds", nargs="+", help="executor binaries to compare")
    a = ap.parse_args()
    if not 1 <= a.pairs <= 50:
        sys.exit("--pairs: 1 to 50")
    for b in a.builds:
        if not os.access(b, os.X_OK):
            sys.exit(f"not an executable: {b}")
    os.makedirs(a.out, exist_ok=True)
    results = {b: [] for b in a.builds}
    for i in range(1, a.pairs + 1):
        for n, b in enumerate(a.builds):
            env = dict(os.environ, E2E_BIN=os.path.abspath(b))
            run = subprocess.run(
                ["cargo", "bench", "--bench", "e2e"],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            path = os.path.join(a.out, f"{n}-{os.path.basename(b)}-{i}.txt")
            with open(path, "w") as f:
                f.write(run.stdout + run.stderr)
            r = parse(run.stdout)
            if run.returncode != 0 or r["runs/s"] is None:
                sys.exit(f"run {i} of {b} failed (exit {run.returncode}); output in {path}")
            results[b].append(r)
            print(
                f"{i} {b}: {r['runs/s']:.0f} runs/s, executor {r['cpu']:.0f} µs, "
                f"bench {r['bench']:.0f} µs, ratio {r['ratio']:.2f}, steal {r['steal']:.0f} ms, "
                f"ceiling {r['ceiling']:.0f}/s",
                flush=True,
            )
    print()
    for b, rs in results.items():
        ratios = [r["ratio"] for r in rs]
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        print(
            f"{b}: {len(rs)} runs, mean {statistics.mean(r['runs/s'] for r in rs):.0f} runs/s "
            f"({min(r['runs/s'] for r in rs):.0f}-{max(r['runs/s'] for r in rs):.0f}), "
            f"executor {statistics.mean(r['cpu'] for r in rs):.1f} µs per run, "
            f"ratio {statistics.mean(ratios):.3f} ± {sd:.3f}"
        )


if __name__ == "__main__":
    main()
