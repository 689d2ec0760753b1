"""Tables and the JSON line of ``python -m bench hypervisor`` (stdlib only).

Input: the samples :mod:`bench.hypervisor` collected, per round (parts 1
and 2) or per repeat (part 3). Output: three readable tables (medians
over rounds; p50/p90 over repeats) and, as the last line, one JSON object
whose ratios are the figures that carry over between machines, with
``targets_met`` against the goals below.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench import common

CLIENTS = ("sync", "trio")
KINDS = ("raw", "trio-socket", "evtchn", "evtchn-sync")
#: the hypervisor's performance goals
TARGET_CALLS = 0.7  # null hypercalls/s >= 0.7 x the echo's
TARGET_EVTCHN = 2.0  # event round trip <= 2 x a raw socketpair's
TARGET_CREATE_MS = 10.0  # create p50
TARGET_GROWTH = 1.2  # create p50 at N=1000 over N=10


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def med(ms: list[dict], key: str) -> float:
    return common.median([m[key] for m in ms if m.get(key) is not None])


def spread(xs: list[float]) -> str:
    m = common.median(xs)
    return f"{(max(xs) - min(xs)) / m * 100:.0f}%" if xs and m else "-"


def calls_table(samples: dict) -> str:
    rows = []
    for client in CLIENTS:
        echo = med(samples[(client, "echo")], "calls_s")
        for name in ("hypervisord", "echo"):
            ms = samples[(client, name)]
            ops = med(ms, "calls_s")
            rows.append([client, name, ops, 1e6 / ops, ops / echo, med(ms, "cpu_us_server"),
                         med(ms, "cpu_us_client"), spread([m["calls_s"] for m in ms])])
    return common.table(["client", "server", "calls/s", "us/call", "x echo", "server CPU us",
                         "client CPU us", "spread"], rows)


def events_table(samples: dict) -> str:
    raw = med(samples["raw"], "us_rt")
    rows = []
    for k in KINDS:
        ms = samples[k]
        us = med(ms, "us_rt")
        waits = [sum(m.get(f"wait_us_{p}", 0.0) for p in "ab") + m.get("wait_us_hv", 0.0)
                 for m in ms]
        rows.append([k, us, 1e6 / us, us / raw, med(ms, "cpu_us_a"), med(ms, "cpu_us_b"),
                     med(ms, "cpu_us_hv") if k.startswith("evtchn") else "-",
                     common.median(waits), spread([m["us_rt"] for m in ms])])
    return common.table(["pair", "us/rt", "rt/s", "x raw", "CPU us A", "B", "hv",
                         "CPU wait us", "spread"], rows)


def domains_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        create, bare = common.median(r["create_ms"]), common.median(r["bare_ms"])
        out.append([r["n"], r["grown"]["with_process"] + 1, len(r["create_ms"]), create,
                    pct(r["create_ms"], 0.9), common.median(r["destroy_ms"]),
                    pct(r["destroy_ms"], 0.9), common.median(r["hv_steps_ms"]),
                    r.get("hv_cpu_ms", float("nan")), bare, create / bare,
                    r.get("template_cpu_ms", float("nan")), r["hv_rss_mb"],
                    r["memory"]["pss_total_mb"]])
    table = common.table(["N", "procs", "reps", "create p50", "p90", "destroy p50", "p90",
                          "hcalls p50", "hv CPU", "bare fork p50", "x fork", "tpl CPU",
                          "hv RSS MB", "guests Pss MB"], out)
    steps = list(rows[0]["steps_ms_p50"])
    return table + "\n\ncreate, step by step (p50, ms):\n" + common.table(
        ["N", *steps], [[r["n"], *r["steps_ms_p50"].values()] for r in rows])


def _calls_json(samples: dict) -> dict[str, Any]:
    r, out = common.rounded, {}
    for client in CLIENTS:
        sfx = "" if client == "sync" else "_trio"
        hv, echo = samples[(client, "hypervisord")], samples[(client, "echo")]
        out[f"hypercall_ratio_vs_echo{sfx}"] = r(med(hv, "calls_s") / med(echo, "calls_s"))
        out[f"hypercall_ops_s{sfx}"] = r(med(hv, "calls_s"), 0)
        out[f"echo_ops_s{sfx}"] = r(med(echo, "calls_s"), 0)
        out[f"hypercall_server_cpu_us{sfx}"] = r(med(hv, "cpu_us_server"), 1)
        out[f"echo_server_cpu_us{sfx}"] = r(med(echo, "cpu_us_server"), 1)
    return out


def _events_json(samples: dict) -> dict[str, Any]:
    r = common.rounded
    us = {k: med(samples[k], "us_rt") for k in KINDS}
    out = {"evtchn_rtt_us": r(us["evtchn"], 1),
           "evtchn_ratio_vs_raw": r(us["evtchn"] / us["raw"]),
           "evtchn_ratio_vs_trio_socket": r(us["evtchn"] / us["trio-socket"]),
           "evtchn_sync_rtt_us": r(us["evtchn-sync"], 1),
           "evtchn_sync_ratio_vs_raw": r(us["evtchn-sync"] / us["raw"]),
           "raw_rtt_us": r(us["raw"], 2), "trio_socket_rtt_us": r(us["trio-socket"], 1)}
    for k in ("evtchn", "evtchn-sync"):
        name = k.replace("-", "_")
        out[f"{name}_cpu_us_per_rt"] = {p: r(med(samples[k], f"cpu_us_{p}"), 1)
                                        for p in ("a", "b", "hv")}
    out["raw_cpu_us_per_rt"] = {p: r(med(samples["raw"], f"cpu_us_{p}"), 1) for p in "ab"}
    return out


def _domains_json(rows: list[dict], close: dict) -> dict[str, Any]:
    r, out = common.rounded, {}
    by_n = {str(x["n"]): x for x in rows}
    p50 = lambda x, f: common.median(x[f])  # noqa: E731
    for key, f in (("create", "create_ms"), ("destroy", "destroy_ms"), ("bare_fork", "bare_ms")):
        out[f"{key}_ms_p50_by_n"] = {n: r(p50(x, f)) for n, x in by_n.items()}
        out[f"{key}_ms_p90_by_n"] = {n: r(pct(x[f], 0.9)) for n, x in by_n.items()}
    first, base, last = rows[0], growth_base(rows), rows[-1]
    out["create_ms_p50"] = r(p50(first, "create_ms"))
    out["create_ms_p50_max_over_n"] = r(max(p50(x, "create_ms") for x in rows))
    out["create_ratio_vs_bare_fork"] = r(p50(first, "create_ms") / p50(first, "bare_ms"))
    out["growth_ns"] = [base["n"], last["n"]]
    out["create_growth_ratio"] = r(p50(last, "create_ms") / p50(base, "create_ms"))
    out["destroy_growth_ratio"] = r(p50(last, "destroy_ms") / p50(base, "destroy_ms"))
    out["bare_fork_growth_ratio"] = r(p50(last, "bare_ms") / p50(base, "bare_ms"))
    # Over the alternated yardstick: what is left when the host's load moves.
    x_fork = lambda x: p50(x, "create_ms") / p50(x, "bare_ms")  # noqa: E731
    out["create_growth_ratio_vs_fork"] = r(x_fork(last) / x_fork(base))
    # hypervisord's own share: the creation's hypercalls (wall) and its CPU per cycle
    out["create_hypercalls_ms_p50_by_n"] = {n: r(p50(x, "hv_steps_ms")) for n, x in by_n.items()}
    out["create_hypercalls_growth_ratio"] = r(p50(last, "hv_steps_ms") / p50(base, "hv_steps_ms"))
    out["hv_cpu_ms_per_create_destroy_by_n"] = {n: r(x.get("hv_cpu_ms", float("nan")))
                                                for n, x in by_n.items()}
    if "hv_cpu_ms" in last and base.get("hv_cpu_ms"):
        out["hv_cpu_growth_ratio"] = r(last["hv_cpu_ms"] / base["hv_cpu_ms"])
    out["template_cpu_ms_per_cycle_by_n"] = {n: r(x.get("template_cpu_ms", float("nan")))
                                             for n, x in by_n.items()}
    out["live_guest_processes_max"] = last["grown"]["with_process"] + 1
    out["background_domains_without_process"] = (last["grown"]["live"]
                                                 - last["grown"]["with_process"])
    out["create_steps_ms_p50_by_n"] = {n: {k: r(v) for k, v in x["steps_ms_p50"].items()}
                                       for n, x in by_n.items()}
    out["hypervisord_rss_mb_by_n"] = {n: r(x["hv_rss_mb"], 1) for n, x in by_n.items()}
    out["guests_pss_mb_by_n"] = {n: r(x["memory"]["pss_total_mb"], 1) for n, x in by_n.items()}
    out["guest_pss_kb"] = r(last["memory"]["pss_kb"], 0)
    out["guest_private_dirty_kb"] = r(last["memory"]["private_dirty_kb"], 0)
    out["teardown_s"] = r(close["elapsed"])
    return out


def growth_base(rows: list[dict]) -> dict:
    """The N=10 row (or the first row of N >= 10, else the first)."""
    for x in rows:
        if x["n"] >= 10:
            return x
    return rows[0]


def result_json(calls: dict, events: dict, rows: list[dict], close: dict, args) -> dict:
    out: dict[str, Any] = {"bench": "hypervisor"}
    out.update(_calls_json(calls))
    out.update(_events_json(events))
    out.update(_domains_json(rows, close))
    out["targets_met"] = {
        "hypercall_ge_0.7x_echo": (out["hypercall_ratio_vs_echo"] or 0) >= TARGET_CALLS,
        # like for like: the raw pair is two blocking processes, so is
        # evtchn-sync; the trio client's figure is reported beside it
        "evtchn_rtt_le_2x_raw": (out["evtchn_sync_ratio_vs_raw"] or 1e9) <= TARGET_EVTCHN,
        "create_p50_le_10ms": (out["create_ms_p50_max_over_n"] or 1e9) <= TARGET_CREATE_MS,
        "create_growth_le_1.2": (out["create_growth_ratio"] or 1e9) <= TARGET_GROWTH,
    }
    out.update(rounds=args.rounds, duration_s=args.duration, repeats=args.repeats,
               ns=[x["n"] for x in rows], cpus=os.cpu_count(), loadavg_before=args.loadavg,
               loadavg_after=round(os.getloadavg()[0], 2))
    return out


def print_report(calls: dict, events: dict, rows: list[dict], close: dict, args) -> None:
    print(f"hypervisor: {args.rounds} interleaved rounds x {args.duration}s per measurement, "
          f"medians; {os.cpu_count()} CPUs; load average {args.loadavg} at the start.")
    print("\n1. null hypercall (XENVER_version), one call at a time, against a trio msgpack "
          "echo server\n   (same transport, envelope and client code). x echo: calls/s over "
          "the echo's (target >= 0.7, sync client).\n   CPU us: /proc schedstat time per call.")
    print(calls_table(calls))
    print("\n2. one event's round trip between two processes. x raw: time over the raw "
          "socketpair's (target <= 2 for evtchn-sync: blocking clients, like the raw pair; evtchn uses trio clients).\n   CPU us: per round trip in A, B and "
          "hypervisord; CPU wait: time they sat runnable without a CPU (host load).")
    print(events_table(events))
    last = rows[-1]["grown"]
    print("\n3. domain create (createdomain .. the guest's first hypercall) and destroy "
          "(destroydomain .. getdomaininfo says gone), ms,\n   with N live domains; procs: "
          "live guest processes (forked from the template); hcalls: the creation's "
          "hypercalls\n   (domctls, populate, connect_domain, unpause); hv CPU: hypervisord's "
          "CPU per create+destroy; bare fork: template\n   fork + trio.run, no domain (the "
          "yardstick, alternated with each create); tpl CPU: the template's CPU per guest\n"
          "   fork + bare fork; guests Pss: what the N-1 background guest processes cost "
          "together.")
    print(domains_table(rows))
    print(f"{last['live'] - last['with_process']} background domains without a process; "
          f"guest process Pss {rows[-1]['memory']['pss_kb']:.0f} KiB, private dirty "
          f"{rows[-1]['memory']['private_dirty_kb']:.0f} KiB (medians); tore down "
          f"{close['destroyed']} domains in {close['elapsed']:.2f}s.")
    if args.profile is not None:
        print(f"(hypervisord profile in {args.profile}; timings include cProfile's overhead)")
    print(json.dumps(result_json(calls, events, rows, close, args)))
