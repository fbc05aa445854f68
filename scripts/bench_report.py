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

lines = ["| relay | K | runs valid | CPU ms / stream-s | ratio to FFmpeg | relay CPU, cores | RSS MiB / stream | latency p50 / p99 ms | p99 from next PES start ms | frames lost (all runs) | DTS gaps | sender late max ms | confirm → 1st frame p50 ms; excess over keyframe p50 / max ms |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
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
        p99n = med([r.get("latency_after_next_start_p99_ms") for r in use])
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
        lines.append(f"| {t}{mark} | {k} | {len(valid)}/{len(rs)} | {cpu:.2f} | {ratio} | {cpu * k / 1000:.2f} | {rss_s} | {p50:.1f} / {p99:.1f} | {p99n:.1f} | {lost} | {gaps} | {late:.0f} | {conf} |")
table = "\n".join(lines)
print(table)

loads = [r.get("loadavg_start", "") for r in rows] + [r.get("loadavg_end", "") for r in rows]
one_min = [float(l.split()[0]) for l in loads if l]
load_s = f"{min(one_min):.2f}–{max(one_min):.2f}" if one_min else "?"
print(f"\n1-min load average during the runs: {load_s}")

def plot_svg(subtitle):
    """Two panels (CPU ms per stream-second, latency p99) against K, log-log, one line per
    RTMP relay; medians of valid runs (all runs when none is valid). Plain SVG, no library."""
    import math
    colors = {"onair": "#d62728", "onair-socket": "#ff9896", "ffmpeg": "#1f77b4", "gst": "#2ca02c"}
    series = {}
    for t in colors:
        pts = []
        for k in ks:
            rs = groups.get((t, k))
            if not rs:
                continue
            use = [r for r in rs if r.get("valid")] or rs
            pts.append((k, med([r.get("cpu_ms_per_stream_s") for r in use]),
                        med([r.get("latency_p99_ms") for r in use])))
        if pts:
            series[t] = pts
    W, H, ml, mr, mt, mb = 460, 300, 60, 15, 40, 45
    def panel(x0, title, idx, unit):
        vals = [p[idx] for pts in series.values() for p in pts if p[idx] == p[idx] and p[idx] > 0]
        kk = [p[0] for pts in series.values() for p in pts]
        if not vals or not kk:
            return ""
        lo, hi = 10 ** math.floor(math.log10(min(vals))), 10 ** math.ceil(math.log10(max(vals)))
        klo, khi = min(kk), max(kk)
        if khi == klo:
            khi = klo * 2
        def X(k): return x0 + ml + (math.log(k) - math.log(klo)) / (math.log(khi) - math.log(klo)) * (W - ml - mr)
        def Y(v): return mt + (math.log(hi) - math.log(v)) / (math.log(hi) - math.log(lo)) * (H - mt - mb)
        out = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>',
               f'<rect x="{x0 + ml}" y="{mt}" width="{W - ml - mr}" height="{H - mt - mb}" fill="none" stroke="#888"/>']
        d = lo
        while d <= hi * 1.0001:
            out.append(f'<line x1="{x0 + ml}" x2="{x0 + W - mr}" y1="{Y(d):.1f}" y2="{Y(d):.1f}" stroke="#ddd"/>'
                       f'<text x="{x0 + ml - 5}" y="{Y(d) + 4:.1f}" text-anchor="end" font-size="11">{d:g}</text>')
            d *= 10
        for k in sorted(set(kk)):
            out.append(f'<text x="{X(k):.1f}" y="{H - mb + 15}" text-anchor="middle" font-size="11">{k}</text>')
        out.append(f'<text x="{x0 + W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">K (concurrent streams); y: {unit}, log scale</text>')
        for t, pts in series.items():
            p = [(X(k), Y(v[idx - 1])) for (k, *v) in pts if v[idx - 1] == v[idx - 1] and v[idx - 1] > 0]
            if p:
                out.append(f'<polyline fill="none" stroke="{colors[t]}" stroke-width="2" points="' +
                           " ".join(f"{a:.1f},{b:.1f}" for a, b in p) + '"/>')
                out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colors[t]}"/>' for a, b in p]
        return "\n".join(out)
    legend = []
    for i, t in enumerate(series):
        legend.append(f'<rect x="{70 + i * 120}" y="{H + 8}" width="12" height="12" fill="{colors[t]}"/>'
                      f'<text x="{86 + i * 120}" y="{H + 18}" font-size="12">{t}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 50}" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            + panel(0, "CPU ms per stream-second (RTMP)", 1, "ms") + "\n"
            + panel(W, "latency p99, last TS packet → sink", 2, "ms") + "\n" + "\n".join(legend)
            + f'\n<text x="{W}" y="{H + 42}" text-anchor="middle" font-size="10" fill="#555">{subtitle}</text>\n</svg>\n')

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
    svg_path = os.path.splitext(out_path)[0] + ".svg"
    open(svg_path, "w").write(plot_svg(f"{now}, {machine}"))
    print(f"wrote {svg_path}")
