#!/usr/bin/env python3
"""Prints one table: Cairn's figures (from `cairn bench --json`) next to the peers' (peers.py),
each peer's as a ratio to Cairn's (above 1: slower than Cairn, for times and for rates)."""
import json, os, sys

cairn = json.load(open(sys.argv[1]))
peers = [json.load(open(p)) for p in sys.argv[2:]]
rows = [("sequential_step", "one run, sequential steps"), ("sequential_step_sync", "  (LangGraph durability=sync)"),
        ("throughput", "runs x 5 steps, 8 at a time"), ("approval_median", "decision -> next step, median"),
        ("restart", "SIGKILL -> restart -> next step")]
c = {f["key"]: f for f in cairn["figures"]}
floor = c.get("floor", {}).get("value")
print(f"same session, {os.path.dirname(os.path.realpath(cairn['dir']))} ({cairn['filesystem']}, {cairn['cores']} cores), floor {floor:.3f} ms per durable write\n")
head = ["workload", "Cairn " + cairn["version"]] + [f"{p['peer']} {p['version']}" for p in peers]
table = [head]
for key, what in rows:
    base = c.get(key if key != "sequential_step_sync" else "sequential_step")
    line = [what, "" if key == "sequential_step_sync" else (f"{base['value']:.3f} {base['unit']}" if base else "—")]
    for p in peers:
        f = {x["key"]: x for x in p["figures"]}.get(key)
        if not f or not base:
            line.append("—")
            continue
        ratio = base["value"] / f["value"] if f["unit"] == "steps/s" else f["value"] / base["value"]
        line.append(f"{f['value']:.3f} {f['unit']} ({ratio:.1f}x)")
    table.append(line)
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
for r in table:
    print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
print()
for p in peers:
    print(f"{p['peer']}: durability {p['durability']}")
    for f in p["figures"]:
        print(f"  {f['key']}: {f['note']}")
