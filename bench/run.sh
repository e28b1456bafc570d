#!/usr/bin/env bash
# Build release and run every workload N times (default 3); print the median
# of each row's numbers. Extra arguments go to pyxis-bench, e.g.
#   bench/run.sh 5 --workloads roundtrip,stateful
# Needs root (the servers it starts make sandboxes; density reads /proc).
set -euo pipefail

runs=3
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    runs=$1
    shift
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --workspace

outdir=$(mktemp -d -t pyxis-bench-runs-XXXXXX)
echo "results: $outdir" >&2
for i in $(seq 1 "$runs"); do
    echo "=== run $i/$runs ===" >&2
    # A missed budget is not an error; a workload that failed to run exits 2.
    rc=0
    target/release/pyxis-bench --out "$outdir/run-$i.jsonl" "$@" >"$outdir/run-$i.txt" || rc=$?
    cat "$outdir/run-$i.txt"
    if [[ $rc -ne 0 ]]; then
        echo "run $i: pyxis-bench exited with $rc" >&2
    fi
done

python3 - "$outdir" "$runs" <<'PY'
import glob, json, statistics, sys

outdir, runs = sys.argv[1], int(sys.argv[2])
key_fields = {
    "roundtrip": ["p50_ms", "p95_ms", "p99_ms"],
    "stream": ["roundtrip_p50_ms", "first_event_p50_ms", "first_event_p95_ms",
               "first_stream_p50_ms", "first_stream_p95_ms", "reply_p50_ms", "correct"],
    "stateful": ["cells_per_s", "p50_ms", "p95_ms", "p99_ms", "correct", "total",
                 "v1_cells_per_s", "ratio"],
    "create": ["create_p50_ms", "create_p95_ms", "ready_p50_ms", "ready_p95_ms"],
    "oneshot": ["p50_ms", "p95_ms"],
    "density": ["uss_mib_per_session", "pss_mib_per_session", "server_rss_mib"],
    "analysis": ["session_median_ms", "local_median_ms", "ratio"],
    "data": ["create_p50_ms", "late_imports_p50_ms", "uss_mib_per_session", "p50_ms", "p95_ms",
             "words_found"],
    "burst": ["p50_ms", "p95_ms", "max_ms", "first_round_p50_ms", "first_round_p95_ms"],
    "spawn100": ["wall_s", "each_p50_ms", "each_p95_ms"],
    "density1000": ["mem_available_fall_mib_per_session", "cell_p50_ms", "cell_p95_ms", "create_s"],
    "packages": ["p50_ms", "p95_ms", "first_install_ms", "direct_mb_s", "forward_mb_s",
                 "tunnel_mb_s", "overhead_pct", "forward_server_cpu_s", "tunnel_server_cpu_s"],
}
rows = {}
order = []
for path in sorted(glob.glob(f"{outdir}/run-*.jsonl")):
    for line in open(path):
        r = json.loads(line)
        name = r["workload"] + (f" ({r['variant']})" if r.get("variant") else "")
        if name not in rows:
            rows[name] = []
            order.append(name)
        rows[name].append(r)

canon = ["roundtrip", "stream", "stateful (steady)", "stateful (churn)",
         "stateful (jupyter)", "create (cold)",
         "create (warm)", "oneshot", "density", "analysis", "burst (25)", "burst (50)",
         "spawn100", "density1000"]
order.sort(key=lambda n: canon.index(n) if n in canon else len(canon))
medians = []
table = [("row", "median of runs", "budget", "pass runs")]
for name in order:
    rs = rows[name]
    wl = rs[0]["workload"]
    med = {"row": name, "runs": len(rs)}
    for k in sorted({k for r in rs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}):
        vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        med[k] = round(statistics.median(vals), 3)
    medians.append(med)
    shown = ", ".join(f"{k}={med[k]:g}" for k in key_fields.get(wl, []) if k in med)
    errors = sum(1 for r in rs if "error" in r)
    if errors:
        shown += f" ({errors} failed)"
    passes = [r.get("pass") for r in rs]
    if all(p is None for p in passes):
        pass_s = "—"
    else:
        pass_s = f"{sum(1 for p in passes if p)}/{len(passes)}"
    table.append((name, shown, rs[0].get("budget") or "—", pass_s))

with open(f"{outdir}/median.jsonl", "w") as f:
    for m in medians:
        f.write(json.dumps(m) + "\n")

widths = [max(len(r[i]) for r in table) for i in range(4)]
print(f"\nMedian over {runs} run(s) ({outdir}/median.jsonl):\n")
for j, r in enumerate(table):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if j == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
PY
