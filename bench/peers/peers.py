#!/usr/bin/env python3
"""The peers' side of `make bench-peers`: the four workloads of `cairn bench` for LangGraph
(SqliteSaver) and DBOS Transact (SQLite), each with its default durability, on the same disk.

  peers.py langgraph|dbos DIR   -> one JSON object on stdout: {"peer", "version", "durability",
                                   "figures": [{"key", "value", "unit", "note"}]}

Workloads (the same keys as `cairn bench --json`):
  sequential_step   one run of 1,000 no-op steps (each returns ~200 bytes), ms per step
  throughput        2,000 runs x 5 steps, 8 at a time, steps/s
  approval_median   a run waiting for a decision, the decision given, to the next step's start
                    (both peers take it in-process: LangGraph's Command(resume=...), DBOS.send)
  restart           SIGKILL of the process while step 50 of 100 runs, a new process started,
                    to step 50's body running again (spawn to body, process start included)
"""
import json, os, signal, statistics, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor

FILLER = "v" * 180
STEPS, RUNS, RUN_STEPS, APPROVALS, RESTARTS = 1000, 2000, 5, 100, 5
if os.environ.get("PEERS_QUICK"):
    STEPS, RUNS, APPROVALS, RESTARTS = 200, 200, 20, 2


def now_ns():
    return time.monotonic_ns()


# ---------------------------------------------------------------- LangGraph

def lg_graph(saver, hold=None):
    from typing import TypedDict
    from langgraph.graph import StateGraph, START, END

    class S(TypedDict):
        i: int
        n: int
        v: str

    def step(s):
        if hold and s["i"] == hold["at"]:
            if os.path.exists(hold["dir"] + "/hold"):
                open(hold["dir"] + "/reached", "w").close()
                time.sleep(3600)
            with open(hold["dir"] + "/resumed", "w") as f:
                f.write(str(now_ns()))
        return {"i": s["i"] + 1, "v": f"{s['i']}:" + FILLER}

    g = StateGraph(S)
    g.add_node("step", step)
    g.add_edge(START, "step")
    g.add_conditional_edges("step", lambda s: "step" if s["i"] < s["n"] else END)
    return g.compile(checkpointer=saver)


def lg_saver(path):
    import sqlite3
    from langgraph.checkpoint.sqlite import SqliteSaver
    conn = sqlite3.connect(path, check_same_thread=False)
    return SqliteSaver(conn)


def langgraph_main(d):
    import importlib.metadata as md
    figures = []
    saver = lg_saver(d + "/lg.sqlite")
    graph = lg_graph(saver)
    cfg = lambda t, n: {"configurable": {"thread_id": t}, "recursion_limit": n + 10}
    for durability in ["async", "sync"]:
        t0 = time.perf_counter()
        graph.invoke({"i": 0, "n": STEPS, "v": ""}, cfg(f"seq-{durability}", STEPS), durability=durability)
        per = (time.perf_counter() - t0) / STEPS * 1000
        figures.append({"key": "sequential_step" if durability == "async" else "sequential_step_sync", "value": per, "unit": "ms/step",
                        "note": f"durability={durability}" + (" (the default)" if durability == "async" else "")})

    def one(k):
        graph.invoke({"i": 0, "n": RUN_STEPS, "v": ""}, cfg(f"tp-{k}", RUN_STEPS))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, range(RUNS)))
    figures.append({"key": "throughput", "value": RUNS * RUN_STEPS / (time.perf_counter() - t0), "unit": "steps/s", "note": "8 threads, one SqliteSaver"})

    # Approval: interrupt() in a node, Command(resume=...) in the same process.
    from typing import TypedDict
    from langgraph.graph import StateGraph, START, END
    from langgraph.types import interrupt, Command
    marks = {}

    class A(TypedDict):
        k: int
        ok: bool

    def before(s):
        return {}

    def gate(s):
        return {"ok": interrupt("go?")}

    def after(s):
        marks[s["k"]] = now_ns()
        return {}

    g = StateGraph(A)
    g.add_node("before", before)
    g.add_node("gate", gate)
    g.add_node("after", after)
    g.add_edge(START, "before")
    g.add_edge("before", "gate")
    g.add_edge("gate", "after")
    g.add_edge("after", END)
    ag = g.compile(checkpointer=saver)
    lat = []
    for k in range(APPROVALS):
        c = {"configurable": {"thread_id": f"ap-{k}"}}
        ag.invoke({"k": k, "ok": False}, c)
        t0 = now_ns()
        ag.invoke(Command(resume=True), c)
        lat.append((marks[k] - t0) / 1e6)
    figures.append({"key": "approval_median", "value": statistics.median(lat), "unit": "ms", "note": "Command(resume=True) in the same process to the next node"})

    figures.append({"key": "restart", "value": restart(d, "langgraph"), "unit": "ms", "note": "python process start and imports included"})
    return {"peer": "LangGraph + SqliteSaver", "version": md.version("langgraph"), "durability": "async checkpoints (default); sync also shown", "figures": figures}


# ---------------------------------------------------------------- DBOS

def dbos_setup(path, hold=None):
    from dbos import DBOS
    DBOS(config={"name": "cairn-peers", "system_database_url": f"sqlite:///{path}", "log_level": "ERROR"})
    marks = {}

    @DBOS.step()
    def noop(i):
        if hold and i == hold["at"]:
            if os.path.exists(hold["dir"] + "/hold"):
                open(hold["dir"] + "/reached", "w").close()
                time.sleep(3600)
            with open(hold["dir"] + "/resumed", "w") as f:
                f.write(str(now_ns()))
        return f"{i}:" + FILLER

    @DBOS.workflow()
    def steps(n):
        for i in range(n):
            noop(i)
        return n

    @DBOS.step()
    def before():
        return 1

    @DBOS.step()
    def after(k):
        marks[k] = now_ns()
        return 2

    @DBOS.workflow()
    def gate(k):
        before()
        DBOS.recv("go", timeout_seconds=3600)
        after(k)

    DBOS.launch()
    return DBOS, steps, gate, marks


def dbos_main(d):
    import importlib.metadata as md
    DBOS, steps, gate, marks = dbos_setup(d + "/dbos.sqlite")
    figures = []
    t0 = time.perf_counter()
    steps(STEPS)
    figures.append({"key": "sequential_step", "value": (time.perf_counter() - t0) / STEPS * 1000, "unit": "ms/step", "note": "each step's output written to the system database"})
    t0 = time.perf_counter()
    handles = [DBOS.start_workflow(steps, RUN_STEPS) for _ in range(RUNS)]
    for h in handles:
        h.get_result()
    figures.append({"key": "throughput", "value": RUNS * RUN_STEPS / (time.perf_counter() - t0), "unit": "steps/s", "note": "DBOS.start_workflow, its default executor"})
    lat = []
    for k in range(APPROVALS):
        h = DBOS.start_workflow(gate, k)
        deadline = time.time() + 30
        while DBOS.get_workflow_status(h.get_workflow_id()).status != "PENDING" or not _dbos_waiting(DBOS, h):
            if time.time() > deadline:
                break
            time.sleep(0.005)
        t0 = now_ns()
        DBOS.send(h.get_workflow_id(), True, "go")
        h.get_result()
        lat.append((marks[k] - t0) / 1e6)
    figures.append({"key": "approval_median", "value": statistics.median(lat), "unit": "ms", "note": "DBOS.send in the same process to the next step (on SQLite, recv polls for notifications: no LISTEN/NOTIFY)"})
    DBOS.destroy()
    figures.append({"key": "restart", "value": restart(d, "dbos"), "unit": "ms", "note": "python process start, imports and DBOS.launch's recovery included"})
    return {"peer": "DBOS Transact + SQLite", "version": md.version("dbos"), "durability": "every step's output committed (default)", "figures": figures}


def _dbos_waiting(DBOS, h):
    # The workflow has recorded its first step and is in recv: a short settle is enough here.
    time.sleep(0.02)
    return True


# ---------------------------------------------------------------- SIGKILL and restart

def restart(d, peer):
    times = []
    for r in range(RESTARTS):
        rd = f"{d}/restart-{peer}-{r}"
        os.makedirs(rd)
        open(rd + "/hold", "w").close()
        ident = f"run-{r}"
        args = [sys.executable, __file__, "--child", peer, rd, ident]
        # The child keeps its database in rd's parent (one per peer), the markers in rd.
        p = subprocess.Popen(args + ["start"])
        wait_for(rd + "/reached")
        p.send_signal(signal.SIGKILL)
        p.wait()
        os.unlink(rd + "/hold")
        t0 = now_ns()
        q = subprocess.Popen(args + ["resume"])
        wait_for(rd + "/resumed")
        t1 = int(open(rd + "/resumed").read())
        times.append((t1 - t0) / 1e6)
        q.send_signal(signal.SIGKILL)
        q.wait()
    return statistics.median(times)


def wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while not (os.path.exists(path) and os.path.getsize(path) >= 0 and (not path.endswith("resumed") or os.path.getsize(path) > 0)):
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.001)


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        # One round of the restart workload: start (held at step 50) or resume. The database
        # is one per peer, in the markers' parent directory.
        peer, rd, ident, mode = sys.argv[2:6]
        base = os.path.dirname(rd)
        if peer == "langgraph":
            graph = lg_graph(lg_saver(base + "/restart.sqlite"), hold={"at": 50, "dir": rd})
            c = {"configurable": {"thread_id": ident}, "recursion_limit": 200}
            graph.invoke(None if mode == "resume" else {"i": 0, "n": 100, "v": ""}, c)
        else:
            DBOS, steps, gate, marks = dbos_setup(base + "/restart-dbos.sqlite", hold={"at": 50, "dir": rd})
            if mode == "start":
                from dbos import SetWorkflowID
                with SetWorkflowID(ident):
                    steps(100)
            else:
                time.sleep(3600)  # DBOS.launch() recovers the pending workflow
        sys.exit(0)
    peer, d = sys.argv[1], sys.argv[2]
    os.makedirs(d, exist_ok=True)
    out = langgraph_main(d) if peer == "langgraph" else dbos_main(d)
    print(json.dumps(out))
