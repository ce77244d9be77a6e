"""What a run says: progress lines on stderr, medians over the repeats, the totals and ratios, the table on stdout."""

from __future__ import annotations

import statistics
import sys
import time


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values)) - 1))
    return values[index]


def summarize(runs: list[dict]) -> dict:
    """The median of every numeric figure over the runs, plus the runs themselves."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {k: statistics.median(run[k] for run in runs) for k in keys}
    if "peak_rss_mb" in out:
        out["peak_rss_mb_max"] = max(run["peak_rss_mb"] for run in runs)
    out["runs"] = runs
    return out


def add_totals(results: dict) -> None:
    """``peak_rss_mb`` over every pgsource run, and ``ratios``: pgsource against the limits of the same run."""
    peaks = [f["peak_rss_mb_max"] for f in results.get("polling", {}).values()]
    for figures in results.get("cdc", {}).values():
        peaks += [v["peak_rss_mb_max"] for k, v in figures.items() if k.startswith("pgsource_")]
    if "latency" in results:
        peaks.append(results["latency"]["peak_rss_mb"])
    results["peak_rss_mb"] = max(peaks) if peaks else 0.0
    ratios: dict = {}
    if "copy_text" in results and "polling" in results:
        for key, figures in results["polling"].items():
            ratios[f"polling_{key}_over_copy_text"] = figures["rows_per_s"] / results["copy_text"]["rows_per_s"]
        keys = sorted((k for k in results["polling"] if polling_key(k)[1] is None), key=lambda k: polling_key(k)[0])
        for key, figures in results["polling"].items():
            workers, setting = polling_key(key)
            if setting is not None:  # the guard's cost: the same worker count with the guard on, against off
                on = results["polling"][f"workers_{workers}"]["rows_per_s"]
                ratios[f"polling_workers_{workers}_late_auto_over_{setting}"] = on / figures["rows_per_s"]
        if len(keys) > 1:
            ratios["polling_many_over_one_worker"] = (
                results["polling"][keys[-1]]["rows_per_s"] / results["polling"]["workers_1"]["rows_per_s"]
            )
    for shape, figures in results.get("cdc", {}).items():
        for key in figures:
            if key.startswith("pgsource_"):
                rate = figures[key]["rows_per_s"]
                ratios[f"cdc_{shape}_{key}_over_streaming"] = rate / figures["streaming_drain"]["rows_per_s"]
                if "streaming_drain_same_settings" in figures:
                    ratios[f"cdc_{shape}_{key}_over_streaming_same_settings"] = (
                        rate / figures["streaming_drain_same_settings"]["rows_per_s"]
                    )
                ratios[f"cdc_{shape}_{key}_over_peek"] = rate / figures["peek_drain"]["rows_per_s"]
    results["ratios"] = ratios


def report(results: dict) -> str:
    lines = []
    copy_text = results.get("copy_text", {}).get("rows_per_s", float("nan"))
    kind = results.get("iggy", {}).get("kind", "stand-in")
    lines.append(f"into {kind} at {results.get('iggy', {}).get('address', '?')}")

    def row(name: str, rate: float, note: str = "") -> None:
        lines.append(f"{name:<44} {rate:>12,.0f}   {note}")

    lines.append(f"{'measurement (median of ' + str(results['repeat']) + ')':<44} {'rows/s':>12}   ratio")
    row("COPY text (physical limit)", copy_text, "1.00 x COPY-text")
    if "copy_json" in results:
        row("COPY row_to_json", results["copy_json"]["rows_per_s"],
            f"{results['copy_json']['rows_per_s'] / copy_text:.2f} x COPY-text")
    polling = results.get("polling", {})
    one = polling["workers_1"]["rows_per_s"] if polling else 0
    for key, figures in polling.items():
        rate = figures["rows_per_s"]
        note = f"{rate / copy_text:.3f} x COPY-text"
        if polling_key(key)[0] != 1:
            note += f", {rate / one:.2f} x 1-worker"
        workers, setting = polling_key(key)
        label = f"workers={workers}" + (f" late_commits={setting}" if setting else "")
        row(f"pgsource polling {label} ({polling_split(results, key)})", rate,
            note + f"; RSS {figures['peak_rss_mb_max']:.0f} MB, CPU {figures['cpu_s_per_m_rows']:.1f} s/M rows,"
            f" {kind} {figures.get('iggy_cpu_s_per_m_rows', float('nan')):.1f}")
    for shape, figures in results.get("cdc", {}).items():
        stream = figures["streaming_drain"]["rows_per_s"]
        peek = figures["peek_drain"]["rows_per_s"]
        same = figures.get("streaming_drain_same_settings", {}).get("rows_per_s", float("nan"))
        row(f"CDC {shape}: raw streaming drain", stream)
        row(f"CDC {shape}: raw streaming drain, pgsource's settings", same, f"{same / stream:.2f} x streaming")
        row(f"CDC {shape}: raw SQL peek drain", peek, f"{peek / stream:.2f} x streaming")
        for key in figures:
            if key.startswith("pgsource_"):
                rate = figures[key]["rows_per_s"]
                row(f"CDC {shape}: {key.replace('_', ' ')}", rate,
                    f"{rate / stream:.2f} x streaming ({rate / same:.2f} x same settings), {rate / peek:.2f} x peek;"
                    f" RSS {figures[key]['peak_rss_mb_max']:.0f} MB, CPU {figures[key]['cpu_s_per_m_rows']:.1f} s/M rows,"
                    f" {kind} {figures[key].get('iggy_cpu_s_per_m_rows', float('nan')):.1f}")
    latency = results.get("latency")
    if latency:
        lines.append(
            f"latency at {latency['achieved_rate']:,.0f} changes/s: p50 {latency['p50_ms']:.1f} ms,"
            f" p99 {latency['p99_ms']:.1f} ms, max {latency['max_ms']:.1f} ms"
        )
    lines.append(f"peak RSS of all pgsource processes, any run: {results['peak_rss_mb']:.0f} MB")
    lines.append(f"rows={results['rows']} nproc={results['nproc']} batch_size={results['batch_size']}")
    return "\n".join(lines)


def polling_key(key: str) -> tuple[int, str | None]:
    """``workers_<N>[_late_<setting>]`` (bench/polling.py) as (N, the late_commits setting, None for auto)."""
    workers, _, setting = key.removeprefix("workers_").partition("_late_")
    return int(workers), setting or None


def polling_split(results: dict, key: str) -> str:
    if polling_key(key)[0] == 1:
        return "1 table"
    return "1 table in key-range chunks" if results["split"] == "chunks" else "2 tables"
