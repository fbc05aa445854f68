#!/usr/bin/env python3
"""Aggregates scripts/bench.sh results (JSON lines) into the markdown table; with a second
argument, writes docs/performance.md. Medians over the valid repetitions of each (tool, K)."""
import json, os, platform, statistics, subprocess, sys, datetime

if sys.argv[1] == "--last":
    d = [json.loads(l) for l in open(sys.argv[2]) if l.strip()][-1]
    nan = float("nan")
    d = {k: (nan if v is None else v) for k, v in d.items()}  # serde writes NaN as null
    print(f" cpu {d.get('cpu_ms_per_stream_s', nan):6.2f} ms/stream-s  rss {d.get('rss_kib_total', 0) / 1024:7.1f} MiB"
          f"  lat p50/p99 {d.get('latency_p50_ms', nan):6.1f}/{d.get('latency_p99_ms', nan):6.1f} ms"
          f"  delivered {d.get('streams_delivered', 0)}/{d.get('streams')}  lost {d.get('frames_lost')}"
          f"  gaps {d.get('dts_gaps')}  sender late {d.get('sender_max_late_ms', nan):.0f} ms"
          f"  confirm->1st frame p50 {d.get('confirm_first_frame_p50_ms', nan):.0f} ms, excess p50/max"
          f" {d.get('confirm_excess_p50_ms', nan):.1f}/{d.get('confirm_excess_max_ms', nan):.1f} ms"
          f"  load {d.get('loadavg_end', '?')}{'' if d.get('valid') else '  NOT VALID'}")
    sys.exit(0)

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out_path = sys.argv[2] if len(sys.argv) > 2 else None

def med(vals):
    vals = [v for v in vals if isinstance(v, (int, float)) and v == v]
    return statistics.median(vals) if vals else float("nan")

groups = {}
for r in rows:
    groups.setdefault((r.get("label"), r.get("streams")), []).append(r)

tools = []
for (t, _) in groups:
    if t not in tools:
        tools.append(t)
ks = sorted({k for (_, k) in groups})

def figure(tool, k, key, valid_only=True):
    rs = groups.get((tool, k), [])
    if valid_only:
        rs = [r for r in rs if r.get("valid")]
    return med([r.get(key) for r in rs])

def fmax(vals):
    vals = [v for v in vals if isinstance(v, (int, float)) and v == v]
    return max(vals) if vals else float("nan")

lines = ["| relay | K | runs valid | CPU ms / stream-s | ratio to FFmpeg | relay CPU, cores | RSS MiB / stream | latency p50 / p99 ms | frames lost (all runs) | DTS gaps | sender late max ms | confirm → 1st frame p50 ms; excess over keyframe p50 / max ms |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for k in ks:
    for t in tools:
        ff = figure("ffmpeg rtmps" if t.endswith(" rtmps") else "ffmpeg", k, "cpu_ms_per_stream_s")
        rs = groups.get((t, k))
        if not rs:
            continue
        valid = [r for r in rs if r.get("valid")]
        use = valid if valid else rs
        cpu = med([r.get("cpu_ms_per_stream_s") for r in use])
        rss = med([r.get("rss_kib_total", 0) / 1024 / k for r in use])
        rss_s = f"{rss:.1f}"
        if t.startswith("onair") and k > 1 and (t, 1) in groups:
            one = med([r.get("rss_kib_total", 0) / 1024 for r in groups[(t, 1)]])
            tot = med([r.get("rss_kib_total", 0) / 1024 for r in use])
            rss_s += f" (extra stream: {(tot - one) / (k - 1):.2f})"
        p50 = med([r.get("latency_p50_ms") for r in use])
        p99 = med([r.get("latency_p99_ms") for r in use])
        lost = sum(r.get("frames_lost", 0) or 0 for r in rs)
        gaps = sum(r.get("dts_gaps", 0) or 0 for r in rs)
        ratio = f"{cpu / ff:.2f}" if ff == ff and ff > 0 else "–"
        mark = "" if valid else " ⚠ not valid"
        late = fmax([r.get("sender_max_late_ms") for r in rs])
        conf = "–"
        if any(r.get("confirm_streams") for r in use):
            conf = (f"{med([r.get('confirm_first_frame_p50_ms') for r in use]):.0f}; "
                    f"{med([r.get('confirm_excess_p50_ms') for r in use]):.1f} / "
                    f"{fmax([r.get('confirm_excess_max_ms') for r in use]):.1f}")
        lines.append(f"| {t}{mark} | {k} | {len(valid)}/{len(rs)} | {cpu:.2f} | {ratio} | {cpu * k / 1000:.2f} | {rss_s} | {p50:.1f} / {p99:.1f} | {lost} | {gaps} | {late:.0f} | {conf} |")
table = "\n".join(lines)
print(table)

loads = [r.get("loadavg_start", "") for r in rows] + [r.get("loadavg_end", "") for r in rows]
one_min = [float(l.split()[0]) for l in loads if l]
load_s = f"{min(one_min):.2f}–{max(one_min):.2f}" if one_min else "?"
print(f"\n1-min load average during the runs: {load_s}")

if out_path:
    cpu_model = "?"
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu_model = l.split(":", 1)[1].strip(); break
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{os.cpu_count()} cores, {cpu_model}, Linux {platform.release()}"
    nxt = med([r.get("latency_after_next_start_p50_ms") for r in rows if r.get("label", "").startswith("onair") and r.get("valid")])
    text = open(out_path).read() if os.path.exists(out_path) else ""
    start, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    block = (f"{start}\nMeasured {now} on {machine}; 1-min load average {load_s} during the runs "
             f"(the machine was shared). Medians over the valid repetitions; raw results: "
             f"`{sys.argv[1]}`.\n\n{table}\n\nonair's latency counted from the datagram that starts the "
             f"next video PES (p50, valid runs): {nxt:.1f} ms.\n{end}")
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    open(out_path, "w").write(text)
    print(f"wrote {out_path}")
