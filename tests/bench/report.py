"""results.md and the plots, from one run's results (results.json)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HTTP_SCENARIOS = {
    "tiny-json": "Tiny JSON (GET /healthz), 64 connections",
    "upstream-50ms": "A view awaiting a local HTTP upstream that answers after 50 ms, "
    "256 connections",
    "orm-read": "An ORM read of 10 rows with a join, PostgreSQL, 64 connections",
}
# What limits a target when it is missed, from the profiles behind this work.
LIMITS = {
    "stock": "Python per-request work left in the server (HTTP parsing, ASGI "
    "messages) and in Django's request/response objects, which this service does "
    "not replace; both configurations share it.",
    "gthread": "the view opens a new TCP connection to the upstream per request "
    "(no client pool) and both the upstream and wrk share the 2 cores.",
    "sync": "as above.",
    "metrics": "prometheus_client's multiprocess mode writes every counter to a "
    "memory-mapped file under a lock.",
    "nginx": "Nginx's workers, its JSON access log and a second TCP hop share the "
    "same 2 cores as the app: in front of a fast app they take CPU from it.",
    "websockets": "each idle connection costs the server's protocol objects, the "
    "Channels consumer with its tasks, and the channel layer's group membership.",
}


def label(row: dict) -> str:
    via = "" if row["via"] == "direct" else f" via {row['via']}"
    return f"{row['config']}{via}"


def find(rows, scenario, config, via="direct"):
    for row in rows:
        if (row["scenario"], row["config"], row["via"]) == (scenario, config, via):
            return row if "failed" not in row else None
    return None


def ratio(a, b) -> float | None:
    if a is None or b is None or not b.get("req_s"):
        return None
    return a["req_s"] / b["req_s"]


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _n(value, digits=0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def http_table(rows: list, scenario: str) -> list[str]:
    ceiling = find(rows, scenario, "nginx-alone")
    lines = [
        "| configuration | req/s | p50 ms | p99 ms | errors | CPU cores"
        " | busiest 2 processes, cores | CPU µs/req | x WSGI sync | x WSGI gthread"
        " | x stock ASGI, same server | of Nginx alone |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["scenario"] != scenario:
            continue
        if "failed" in row:
            lines.append(f"| {label(row)} | failed: {row['failed']} ||||||||||")
            continue
        stock = None
        if row["config"].startswith("service-"):
            server = row["config"].removeprefix("service-").removesuffix("-no-metrics")
            stock = find(rows, scenario, f"stock-{server}")
        name = label(row)
        if "upstream_cpu_cores" in row:
            name += f" (upstream process: {row['upstream_cpu_cores']:.2f} cores)"
        if "nginx_cpu_cores" in row:
            name += f" (Nginx: {row['nginx_cpu_cores']:.2f} cores)"
        if "first_attempt_failed" in row:
            name += f" (second attempt; the first: {row['first_attempt_failed']})"
        lines.append(
            f"| {name} | {_n(row['req_s'])} | {_n(row['p50_ms'], 1)} "
            f"| {_n(row['p99_ms'], 1)} | {row['errors']} | {_n(row['cpu_cores'], 2)} "
            f"| {' + '.join(f'{c:.2f}' for c in row['busiest'])} "
            f"| {_n(row['cpu_us_per_req'])} "
            f"| {_x(ratio(row, find(rows, scenario, 'wsgi-sync')))} "
            f"| {_x(ratio(row, find(rows, scenario, 'wsgi-gthread')))} "
            f"| {_x(ratio(row, stock))} "
            f"| {_percent(ratio(row, ceiling))} |"
        )
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def cpu_ratio(a, b) -> float | None:
    """How many times less CPU per request a takes than b."""
    if a is None or b is None or not (a["cpu_us_per_req"] and b["cpu_us_per_req"]):
        return None
    return b["cpu_us_per_req"] / a["cpu_us_per_req"]


def _cost(r: float | None) -> float | None:
    return None if r is None else 1 - r


def targets(rows: list) -> list[tuple]:
    """(target, measured, by CPU per request, met, limit) for every target of the
    issue. Speed-ups are judged on throughput, as the issue states them; costs
    (metrics, Nginx) on the worse of throughput and CPU per request, since one
    worker holding most of wrk's connections can hide a cost in throughput."""
    out = []
    for server in ("uvicorn", "granian", "gunicorn-uvicorn"):
        service = find(rows, "tiny-json", f"service-{server}")
        stock = find(rows, "tiny-json", f"stock-{server}")
        r = ratio(service, stock)
        out.append(
            (
                f"tiny JSON, service >= 2x stock Django ASGI ({server}; aim 3x)",
                _x(r),
                _x(cpu_ratio(service, stock)),
                r is not None and r >= 2,
                LIMITS["stock"],
            )
        )
    for server in ("uvicorn", "granian", "gunicorn-uvicorn"):
        service = find(rows, "upstream-50ms", f"service-{server}")
        for baseline, floor in (("wsgi-gthread", 2), ("wsgi-sync", 20)):
            base = find(rows, "upstream-50ms", baseline)
            r = ratio(service, base)
            out.append(
                (
                    f"50 ms upstream, service ({server}) >= {floor}x {baseline}",
                    _x(r),
                    _x(cpu_ratio(service, base)),
                    r is not None and r >= floor,
                    LIMITS[baseline.removeprefix("wsgi-")],
                )
            )
    on = find(rows, "tiny-json", "service-uvicorn")
    off = find(rows, "tiny-json", "service-uvicorn-no-metrics")
    costs = (_cost(ratio(on, off)), _cost(cpu_ratio(on, off)))
    out.append(
        (
            "metrics on costs <= 10% (tiny JSON, uvicorn)",
            _percent(costs[0]),
            _percent(costs[1]),
            None not in costs and max(costs) <= 0.10,
            LIMITS["metrics"],
        )
    )
    for scenario, server, via in (
        ("tiny-json", "uvicorn", "nginx"),
        ("tiny-json", "uvicorn", "nginx-uds"),
        ("tiny-json", "granian", "nginx"),
        ("upstream-50ms", "uvicorn", "nginx"),
    ):
        behind = find(rows, scenario, f"service-{server}", via)
        direct = find(rows, scenario, f"service-{server}")
        costs = (_cost(ratio(behind, direct)), _cost(cpu_ratio(behind, direct)))
        out.append(
            (
                f"Nginx in front costs <= 15% ({scenario}, {server}, {via})",
                _percent(costs[0]),
                _percent(costs[1]),
                None not in costs and max(costs) <= 0.15,
                LIMITS["nginx"],
            )
        )
    for row in rows:
        if row["scenario"] == "websockets" and "failed" not in row:
            met = row["held"] >= 10_000 and row["kib_per_connection"] <= 20
            out.append(
                (
                    f">= 10 000 idle WebSockets per worker at <= 20 KiB each "
                    f"({row['config']})",
                    f"{row['held']:,} held, {row['kib_per_connection']:.1f} KiB each",
                    "",
                    met,
                    LIMITS["websockets"],
                )
            )
    return out


def plot_http(rows: list, scenario: str, path: Path) -> None:
    shown = [r for r in rows if r["scenario"] == scenario and "failed" not in r]
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.2))
    axes.barh([label(r) for r in shown], [r["req_s"] for r in shown], color="#4878a8")
    for index, row in enumerate(shown):
        axes.text(row["req_s"], index, f" {row['req_s']:,.0f}", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("requests per second (higher is better)")
    axes.set_title(HTTP_SCENARIOS[scenario], fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_websockets(rows: list, path: Path) -> None:
    shown = [r for r in rows if r["scenario"] == "websockets" and "failed" not in r]
    figure, axes = plt.subplots(figsize=(7, 2.5))
    axes.barh(
        [r["config"] for r in shown],
        [r["kib_per_connection"] for r in shown],
        color="#6a9a58",
    )
    axes.axvline(20, color="#b04040", linestyle="--", label="target: 20 KiB")
    axes.set_xlabel("server memory per idle WebSocket, KiB (lower is better)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(run: dict, out: Path) -> None:
    rows, m = run["rows"], run["machine"]
    plots = []
    for scenario in HTTP_SCENARIOS:
        plot_http(rows, scenario, out / f"{scenario}.png")
        plots.append(scenario)
    plot_websockets(rows, out / "websockets.png")
    s = run["settings"]
    lines = [
        "# Benchmark results",
        "",
        f"One {run['mode']} run of `tests/bench.sh`, started {run['started']}, "
        f"{run['minutes']} minutes. Each HTTP cell: {s['warmup']} s of warm-up, then "
        f"{s['seconds']} s measured with wrk (2 threads) on the same machine. Load "
        f"average before the run {_load(run['load_before'])}, after "
        f"{_load(run['load_after'])}.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB",
        f"- {m['os']}, kernel {m['kernel']}",
        f"- {m['python']}, Django {m['django']}, Uvicorn {m['uvicorn']}, Granian "
        f"{m['granian']}, Gunicorn {m['gunicorn']}, psycopg {m['psycopg']}",
        f"- Nginx {m['nginx']}, {m['wrk']}, PostgreSQL {m['postgresql']}",
        "",
        "## Targets",
        "",
        "| target | measured (throughput) | by CPU per request | met "
        "| what limits it when missed |",
        "|---|---|---|---|---|",
    ]
    for target, measured, by_cpu, met, limit in targets(rows):
        lines.append(
            f"| {target} | {measured} | {by_cpu} | {'met' if met else '**missed**'} "
            f"| {'' if met else limit} |"
        )
    for scenario, title in HTTP_SCENARIOS.items():
        lines += ["", f"## {title}", "", f"![{scenario}]({scenario}.png)", ""]
        lines += http_table(rows, scenario)
    lines += [
        "",
        f"## Idle WebSockets, one worker ({s['websockets']:,} wanted)",
        "",
        "![websockets](websockets.png)",
        "",
        "| configuration | held | errors | seconds to open | RSS before MiB "
        "| RSS held MiB | RSS after closing MiB | KiB per connection |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["scenario"] != "websockets":
            continue
        if "failed" in row:
            lines.append(f"| {row['config']} | failed: {row['failed']} |||||||")
            continue
        lines.append(
            f"| {row['config']} | {row['held']:,} | {row['errors']} "
            f"| {row['open_seconds']:.1f} | {row['rss_before_mib']:.1f} "
            f"| {row['rss_held_mib']:.1f} | {row['rss_after_close_mib']:.1f} "
            f"| {row['kib_per_connection']:.1f} |"
        )
    lines += [
        "",
        f"## Server-Sent Events fan-out, one worker, {s['sse_clients']} streams",
        "",
        "| configuration | events delivered/s | published | lost | delivery p50 ms "
        "| delivery p99 ms | CPU cores |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["scenario"] != "sse":
            continue
        if "failed" in row:
            lines.append(f"| {label(row)} | failed: {row['failed']} ||||||")
            continue
        lines.append(
            f"| {label(row)} | {row['events_per_second']:,.0f} | {row['published']:,} "
            f"| {row['lost']:,} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['cpu_cores']:.2f} |"
        )
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _load(average: list) -> str:
    return " / ".join(f"{value:.2f}" for value in average) + " (1/5/15 min)"
