#!/usr/bin/env python3
"""The figures of a scripts/million.sh run: reads the snapshots the script took in WORK (base, all
connected, start and end of the hold; the simulator's latency buckets at both ends of the hold)
and device-sim's report, writes OUT/million.json and OUT/million.md. Python 3 standard library
only.

Usage: million_report.py WORK OUT DEVICES SUBSCRIBERS NODES INTERVAL HOLD SIM_RC CONNECTED ARGS NATS
"""

import json
import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def snaps(path):
    out = {}
    with open(path) as f:
        for line in f:
            label, *pairs = line.split()
            vals = {}
            for p in pairs:
                k, _, v = p.partition("=")
                try:
                    vals[k] = float(v)
                except ValueError:
                    vals[k] = None
            out[label] = vals
    return out


def buckets(path):
    """Cumulative counts by upper bound (seconds; +Inf last), or {} if the file is missing."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                le, count = line.split()
                out[float(le)] = float(count)
    except (OSError, ValueError):
        return {}
    return out


def hold_latency(work):
    """The hold's own end-to-end latency: the difference of the cumulative buckets taken at its
    start and end, as the bucket bounds (ms) under which 99% and 99.9% of its messages arrived
    and the share within 100 ms. The whole run's p99 also counts the ramp, where the fleet's
    connects and its first messages compete for the CPU."""
    a = buckets(os.path.join(work, "latency_hold_start"))
    b = buckets(os.path.join(work, "latency_hold_end"))
    if not b:
        return {}
    d = sorted((le, b[le] - a.get(le, 0)) for le in b)
    total = d[-1][1]
    if total <= 0:
        return {"messages": 0}

    def bound(q):
        le = next(le for le, n in d if n >= q * total)
        return None if le == float("inf") else round(le * 1000, 3)

    within = next((n for le, n in d if abs(le - 0.1) < 1e-9), None)
    return {
        "messages": int(total),
        "p99_at_most_ms": bound(0.99),
        "p999_at_most_ms": bound(0.999),
        "within_100ms_pct": round(100 * within / total, 3) if within is not None else None,
    }


def delta(a, b, key):
    if a.get(key) is None or b.get(key) is None:
        return None
    return b[key] - a[key]


def per(x, n):
    return x / n if x is not None and n else None


def main():
    (work, out, devices, subs, nodes, interval, hold, sim_rc, connected, args,
     nats) = sys.argv[1:12]
    devices, subs, nodes, hold = int(devices), int(subs), int(nodes), int(hold)
    s = snaps(os.path.join(work, "snaps"))
    base, conn, h0, h1 = s["base"], s["connected"], s["hold_start"], s["hold_end"]
    # Without everyone connected, the last look at the ramp (the simulator still running) is
    # where the run got to: its memory and sockets, per connection actually made.
    ramp = s.get("ramp") if connected != "1" else None
    try:
        with open(os.path.join(out, "device-sim.json")) as f:
            sim = json.load(f)
    except (OSError, ValueError):
        sim = {}
    held_s = delta(h0, h1, "t")
    sessions = devices + subs
    lat = sim.get("latency_ms") or {}

    def cpu(key, a, b):
        d = delta(a, b, key)
        return round(d / CLK_TCK, 2) if d is not None else None

    def pct(key):
        c = cpu(key, h0, h1)
        return round(100 * c / held_s, 1) if c is not None and held_s else None

    published_held = delta(h0, h1, "published")
    fig = {
        "command": f"scripts/million.sh {args}",
        "nats_server": nats,
        "devices": devices,
        "subscribers": subs,
        "gateway_nodes": nodes + 1,
        "publish_interval": interval,
        "all_connected": connected == "1",
        "device_sim_exit": int(sim_rc),
        "devices_connected_at_end": sim.get("devices_connected"),
        "time_to_connect_all_s": round(sim["all_connected_ms"] / 1000, 1)
        if sim.get("all_connected_ms") is not None else None,
        "connect_rate_per_s": sim.get("connect_rate_per_s"),
        "connect_failures_by_reason": sim.get("connect_failures_by_reason"),
        "disconnects_by_reason": sim.get("disconnects_by_reason"),
        "connect_ms_p99": (sim.get("connect_ms") or {}).get("p99"),
        "hold_s": round(held_s, 1) if held_s else None,
        "publish_rate_held_per_s": round(per(published_held, held_s), 1)
        if held_s and published_held is not None else None,
        "receive_rate_held_per_s": round(per(delta(h0, h1, "received"), held_s), 1)
        if held_s and delta(h0, h1, "received") is not None else None,
        "publish_rate_expected_per_s": None,
        "messages_published": sim.get("messages_published"),
        "messages_received": sim.get("messages_received"),
        "lost": sim.get("lost"),
        "duplicates": sim.get("duplicates"),
        "out_of_order": sim.get("out_of_order"),
        "e2e_ms_p50": lat.get("p50"),
        "e2e_ms_p99": lat.get("p99"),
        "e2e_ms_p999": lat.get("p999"),
        "e2e_ms_max": lat.get("max"),
        "hold_e2e": hold_latency(work),
        "gateway_rss_total_B": h1.get("gw_rss"),
        "gateway_rss_per_session_B": round(per(delta(base, h1, "gw_rss"), sessions), 1)
        if delta(base, h1, "gw_rss") is not None else None,
        "subscriber_node_rss_B": h1.get("sub_node_rss"),
        "nats_rss_B": h1.get("nats_rss"),
        "simulator_rss_total_B": h1.get("sim_rss"),
        "simulator_rss_per_device_B": round(per(h1.get("sim_rss"), devices), 1)
        if h1.get("sim_rss") else None,
        "slab_B": h1.get("slab"),
        "slab_growth_per_connection_B": round(per(delta(base, h1, "slab"), sessions), 1)
        if delta(base, h1, "slab") is not None else None,
        "sunreclaim_B": h1.get("sunreclaim"),
        "mem_available_B_at_end": h1.get("mem_available"),
        "sockstat_tcp_inuse": h1.get("tcp_inuse"),
        "sockstat_tcp_mem_pages": h1.get("tcp_mem_pages"),
        "cpu_s_connect_phase": {"gateways": cpu("gw_cpu", base, conn),
                                "nats": cpu("nats_cpu", base, conn),
                                "simulator": cpu("sim_cpu", base, conn)},
        "cpu_s_hold": {"gateways": cpu("gw_cpu", h0, h1), "nats": cpu("nats_cpu", h0, h1),
                       "simulator": cpu("sim_cpu", h0, h1)},
        "cpu_pct_of_one_core_hold": {"gateways": pct("gw_cpu"), "nats": pct("nats_cpu"),
                                     "simulator": pct("sim_cpu")},
        "loadavg_1m_at_end_of_hold": h1.get("loadavg"),
    }
    if ramp is not None:
        made = ramp.get("connected") or 0
        fig["ramp_last_look"] = {
            "seconds_into_ramp": round(delta(base, ramp, "t") or 0, 1),
            "devices_connected": made,
            "gateway_rss_total_B": ramp.get("gw_rss"),
            "gateway_rss_per_connected_B": round(per(delta(base, ramp, "gw_rss"), made), 1)
            if made else None,
            "simulator_rss_total_B": ramp.get("sim_rss"),
            "nats_rss_B": ramp.get("nats_rss"),
            "slab_B": ramp.get("slab"),
            "sunreclaim_B": ramp.get("sunreclaim"),
            "mem_available_B": ramp.get("mem_available"),
            "sockstat_tcp_inuse": ramp.get("tcp_inuse"),
            "sockstat_tcp_mem_pages": ramp.get("tcp_mem_pages"),
            "cpu_s": {"gateways": cpu("gw_cpu", base, ramp), "nats": cpu("nats_cpu", base, ramp),
                      "simulator": cpu("sim_cpu", base, ramp)},
            "loadavg_1m": ramp.get("loadavg"),
        }
    secs = parse_duration(interval)
    if secs:
        fig["publish_rate_expected_per_s"] = round(devices / secs, 1)
    with open(os.path.join(out, "million.json"), "w") as f:
        json.dump(fig, f, indent=2)
    with open(os.path.join(out, "million.md"), "w") as f:
        f.write(markdown(fig))
    print(markdown(fig))


def parse_duration(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for u in ("ms", "s", "m", "h"):
        if text.endswith(u) and text[: -len(u)].replace(".", "", 1).isdigit():
            return float(text[: -len(u)]) * units[u]
    return None


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ", ".join(f"{k} {fmt(x)}" for k, x in v.items()) or "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return str(v)


def markdown(fig):
    lines = [f"# Million-device run: {fig['devices']:,} devices", "",
             f"`{fig['command']}` ({fig['nats_server']})", "", "| figure | value |", "|---|---|"]
    for k, v in fig.items():
        if k not in ("command", "nats_server"):
            lines.append(f"| {k} | {fmt(v)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
