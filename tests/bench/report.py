"""results.md and the plots, from one run's results (results.json)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HTTP_SCENARIOS = {
    "tiny-json": "Tiny JSON (GET /bench/tiny: what /healthz answers), 64 connections",
    "upstream-50ms": "A view awaiting a local HTTP upstream that answers after 50 ms, "
    "256 connections",
    "orm-read": "An ORM read of 10 rows with a join, 64 connections",
    "cached-read": "An item read by id, served from the Redis cache "
    "(GET /api/items/1), 64 connections",
    "write-create": "Creating an item with 2 tags, one transaction "
    "(POST /api/items with an API key), 64 connections",
    "write-restock": "A transactional bulk update of 10 items "
    "(POST /api/items/restock with an API key), 64 connections",
    "tracing": "Tiny JSON on a traced path (GET /bench/tiny), uvicorn, tracing off "
    "and sampling 0%, 10% and 100% of requests, 64 connections",
}
WSGI = ("wsgi-sync", "wsgi-gthread")
# The idle-connection scenarios, and what they hold.
IDLE = {"websockets": "WebSockets", "idle-streams": "event streams"}
# The broadcast's subscribers, by kind.
BROADCAST = {"websockets": "WebSockets", "streams": "event streams"}
SERVERS = ("uvicorn", "granian", "gunicorn-uvicorn")
# The service generated from the template before its native data path.
BEFORE = "before-uvicorn"
# The databases the services run on (deploy.DATABASES), by the names the rows
# give them: the first is every cell's unless its row names another (rows of
# runs before the database scenarios ran on each name none).
DATABASES = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}
DEFAULT_DATABASE = next(iter(DATABASES))
# The scenarios measured on each database.
ON_EVERY_DATABASE = ("orm-read", "cached-read", "write-create", "write-restock")
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
    "tracing": "each request starts a span, sampled or not (ids, the sampler's "
    "decision, the context switch), and a sampled one is ended, queued and "
    "encoded to protobuf by the exporter's thread under the GIL.",
    # Found with tracemalloc on one worker (tests/bench/notes.md).
    "websockets": "Granian itself: tungstenite's 128 KiB read buffer, allocated "
    "when each WebSocket opens, which no Granian option changes (a bare ASGI app "
    "holds 147 KiB per WebSocket under Granian 2.8); and Granian offers no receive "
    "queue, so its consumers wait on Channels' two receives (3 KiB).",
    "idle-streams": "Granian itself: a bare ASGI app's idle stream holds 27 KiB "
    "under Granian 2.8 (9.6 under Uvicorn); only --http1-buffer-size 8192 lowers "
    "it (to 16.5), and that refuses request heads Nginx passes.",
    # These four are read from the code paths, not yet from profiles.
    "tiny-wsgi": "Gunicorn's workers answer in a plain blocking loop, with "
    "Django's stock middleware and no metrics or access log; the ASGI server adds "
    "its event loop, protocol objects and ASGI messages per request, the service "
    "its metrics and access log.",
    "orm-read": "both run Django's query compilation and row conversion; the "
    "service adds psycopg's asyncio cursor, the pool checkout and an event-loop "
    "wake-up per query, and the ASGI server's per-request work, on 2 cores shared "
    "with PostgreSQL and wrk.",
    "orm-read-mysql": "both run Django's query compilation and row conversion; "
    "the service adds asyncmy's cursor, the pool checkout and an event-loop "
    "wake-up per query, and the ASGI server's per-request work, on 2 cores shared "
    "with MariaDB and wrk.",
    "cached-read": "each hit is one Redis round trip through redis.asyncio (its "
    "connection pool and reply parsing in Python, an event-loop wake-up) where a "
    "WSGI worker blocks in redis-py; unpickling the item and building the "
    "response cost both the same.",
    "write": "each write first checks its API key (one indexed read through "
    "core.reads and a SHA-256), then runs its transaction in a thread (one "
    "sync_to_async hop) on Django's synchronous pool, then drops cache entries "
    "over redis.asyncio; the service before had no keys to check, and ran "
    "restock with no transaction and no row locks.",
}


def database(row: dict) -> str:
    return row.get("database", DEFAULT_DATABASE)


def label(row: dict) -> str:
    via = "" if row["via"] == "direct" else f" via {row['via']}"
    on = "" if database(row) == DEFAULT_DATABASE else f" on {DATABASES[database(row)]}"
    return f"{row['config']}{via}{on}"


def find(rows, scenario, config, via="direct", on=DEFAULT_DATABASE):
    """The row of `config` in `scenario`, on database `on`; None if it failed."""
    for row in rows:
        if (row["scenario"], row["config"], row["via"], database(row)) == (
            scenario,
            config,
            via,
            on,
        ):
            return row if "failed" not in row else None
    return None


def ratio(a, b) -> float | None:
    if a is None or b is None or not b.get("req_s"):
        return None
    return a["req_s"] / b["req_s"]


def _round_ratios(a: dict, b: dict) -> list[float]:
    """a's throughput over b's in each round of Cells.alternate (none if either
    has no rounds, or another count of them)."""
    ours, theirs = a.get("rounds_req_s"), b.get("rounds_req_s")
    if not ours or not theirs or len(ours) != len(theirs):
        return []
    return [x / y for x, y in zip(ours, theirs, strict=True) if x and y]


def spread(a: dict | None, b: dict | None, cost: bool = False) -> str:
    """The lowest and highest of a's throughput over b's among the rounds (with
    `cost`, of what a costs against b), for the targets' table; "" without
    rounds."""
    if a is None or b is None:
        return ""
    ratios = _round_ratios(a, b)
    if len(ratios) < 2:
        return ""
    if cost:
        costs = [1 - r for r in ratios]
        return f" (rounds {min(costs):.0%} to {max(costs):.0%})"
    return f" (rounds {min(ratios):.2f}-{max(ratios):.2f}x)"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _n(value, digits=0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def http_table(rows: list, scenario: str) -> list[str]:
    """Each row against the baselines on its own database (the WSGI baselines,
    stock Django, before-uvicorn)."""
    ceiling = find(rows, scenario, "nginx-alone")
    lines = [
        "| configuration | req/s | p50 ms | p99 ms | errors | CPU cores"
        " | busiest 2 processes, cores | CPU µs/req | x WSGI sync | x WSGI gthread"
        " | x stock ASGI, same server | x before-uvicorn | of Nginx alone |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["scenario"] != scenario:
            continue
        if "failed" in row:
            lines.append(f"| {label(row)} | failed: {row['failed']} |||||||||||")
            continue
        on = database(row)
        stock = None
        if row["config"].startswith("service-"):
            server = row["config"].removeprefix("service-").removesuffix("-no-metrics")
            stock = find(rows, scenario, f"stock-{server}", on=on)
        name = label(row)
        if "upstream_cpu_cores" in row:
            name += f" (upstream process: {row['upstream_cpu_cores']:.2f} cores)"
        if "beside_cpu_cores" in row:
            name += f" (collector stand-in: {row['beside_cpu_cores']:.2f} cores)"
        if "nginx_cpu_cores" in row:
            name += f" (Nginx: {row['nginx_cpu_cores']:.2f} cores)"
        if "database_cpu_cores" in row and scenario in ON_EVERY_DATABASE:
            name += f" (database server: {row['database_cpu_cores']:.2f} cores)"
        if "first_attempt_failed" in row:
            name += f" (second attempt; the first: {row['first_attempt_failed']})"
        lines.append(
            f"| {name} | {_n(row['req_s'])} | {_n(row['p50_ms'], 1)} "
            f"| {_n(row['p99_ms'], 1)} | {row['errors']} | {_n(row['cpu_cores'], 2)} "
            f"| {' + '.join(f'{c:.2f}' for c in row['busiest'])} "
            f"| {_n(row['cpu_us_per_req'])} "
            f"| {_x(ratio(row, find(rows, scenario, 'wsgi-sync', on=on)))} "
            f"| {_x(ratio(row, find(rows, scenario, 'wsgi-gthread', on=on)))} "
            f"| {_x(ratio(row, stock))} "
            f"| {_x(ratio(row, find(rows, scenario, BEFORE, on=on)))} "
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


def better_wsgi(rows: list, scenario: str, on=DEFAULT_DATABASE) -> dict | None:
    """The WSGI configuration with the higher throughput in `scenario` on `on`."""
    found = [row for row in (find(rows, scenario, c, on=on) for c in WSGI) if row]
    return max(found, key=lambda row: row["req_s"], default=None)


def _ran(rows: list, scenario: str, on: str | None = None) -> bool:
    """Whether the run had this scenario (python -m bench --only runs some), on
    database `on` if named."""
    return any(
        row["scenario"] == scenario and on in (None, database(row)) for row in rows
    )


def targets(rows: list) -> list[tuple]:
    """(target, measured, by CPU per request, met, limit) for every target of the
    issue whose scenario ran. Speed-ups are judged on throughput, as the issue
    states them (the ORM read on CPU per request too, as it says); costs (metrics,
    Nginx) on the worse of throughput and CPU per request, since one worker
    holding most of wrk's connections can hide a cost in throughput."""
    out = []
    if _ran(rows, "tiny-json"):
        out += _tiny_json_targets(rows)
    if _ran(rows, "upstream-50ms"):
        out += _upstream_targets(rows)
    for on in DATABASES:
        if _ran(rows, "orm-read", on):
            out += _against_wsgi(
                rows, "orm-read", "ORM read (10 rows with a join)", 1.0, True, on
            )
        if _ran(rows, "cached-read", on):
            out += _against_wsgi(
                rows, "cached-read", "item read from the Redis cache", 1.2, on=on
            )
    for scenario, what in (
        ("write-create", "creating an item"),
        ("write-restock", "the transactional bulk update"),
    ):
        if not _ran(rows, scenario):
            continue
        service = find(rows, scenario, "service-uvicorn")
        before = find(rows, scenario, BEFORE)
        r = ratio(service, before)
        out.append(
            (
                f"{what}, service (uvicorn) no slower than the service before "
                f"its native data path ({BEFORE})",
                _x(r),
                _x(cpu_ratio(service, before)),
                r is not None and r >= 1,
                LIMITS["write"],
            )
        )
    out += _cost_targets(rows)
    if _ran(rows, "tracing"):
        out += _tracing_targets(rows)
    for row in rows:
        if row["scenario"] in IDLE and "failed" not in row:
            # At 10,000 connections, or at the most a quick run holds.
            point = next(
                (p for p in row["points"] if p["connections"] == 10_000),
                row["points"][-1],
            )
            met = point["held"] >= 10_000 and point["kib_per_connection"] <= 20
            out.append(
                (
                    f">= 10 000 idle {IDLE[row['scenario']]} per worker at <= 20 KiB "
                    f"each ({row['config']})",
                    f"{point['held']:,} held, {point['kib_per_connection']:.1f} KiB "
                    "each",
                    "",
                    met,
                    LIMITS[row["scenario"]],
                )
            )
    return out


def _against_wsgi(
    rows, scenario, what, floor, by_cpu=False, on=DEFAULT_DATABASE
) -> list[tuple]:
    """The service under each server against the better WSGI configuration of
    `scenario`, both on database `on`: at least `floor` times its throughput
    and, with `by_cpu`, no more CPU per request than it."""
    base = better_wsgi(rows, scenario, on)
    name = base["config"] if base else "none ran"
    if on != DEFAULT_DATABASE:
        what += f" on {DATABASES[on]}"
    out = []
    for server in SERVERS:
        service = find(rows, scenario, f"service-{server}", on=on)
        r, by = ratio(service, base), cpu_ratio(service, base)
        met = r is not None and r >= floor
        target = f"{what}, service ({server}) >= {floor:.1f}x the better WSGI ({name})"
        if by_cpu:
            met = met and by is not None and by >= 1
            target += " and no more CPU per request (aim 1.5x)"
        limit = LIMITS["tiny-wsgi" if scenario == "tiny-json" else scenario]
        limit = LIMITS.get(f"{scenario}-{on}", limit)
        out.append((target, _x(r) + spread(service, base), _x(by), met, limit))
    return out


def _tiny_json_targets(rows) -> list[tuple]:
    out = []
    for server in SERVERS:
        service = find(rows, "tiny-json", f"service-{server}")
        stock = find(rows, "tiny-json", f"stock-{server}")
        r = ratio(service, stock)
        out.append(
            (
                f"tiny JSON, service >= 2x stock Django ASGI ({server}; aim 3x)",
                _x(r) + spread(service, stock),
                _x(cpu_ratio(service, stock)),
                r is not None and r >= 2,
                LIMITS["stock"],
            )
        )
    return out + _against_wsgi(rows, "tiny-json", "tiny JSON", 1.0)


def _upstream_targets(rows) -> list[tuple]:
    out = []
    for server in SERVERS:
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
    return out


def _cost_targets(rows) -> list[tuple]:
    """Metrics and Nginx in front: costs, on the worse of the two measures."""
    out = []
    if _ran(rows, "tiny-json"):
        on = find(rows, "tiny-json", "service-uvicorn")
        off = find(rows, "tiny-json", "service-uvicorn-no-metrics")
        costs = (_cost(ratio(on, off)), _cost(cpu_ratio(on, off)))
        out.append(
            (
                "metrics on costs <= 10% (tiny JSON, uvicorn)",
                _percent(costs[0]) + spread(on, off, cost=True),
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
        if not _ran(rows, scenario):
            continue
        behind = find(rows, scenario, f"service-{server}", via)
        direct = find(rows, scenario, f"service-{server}")
        costs = (_cost(ratio(behind, direct)), _cost(cpu_ratio(behind, direct)))
        out.append(
            (
                f"Nginx in front costs <= 15% ({scenario}, {server}, {via})",
                _percent(costs[0]) + spread(behind, direct, cost=True),
                _percent(costs[1]),
                None not in costs and max(costs) <= 0.15,
                LIMITS["nginx"],
            )
        )
    return out


def _tracing_targets(rows) -> list[tuple]:
    """Tracing's cost at a 10% sample, on the worse of the two measures; at 0%
    and 100%, reported (met: None) without a target."""
    off = find(rows, "tracing", "tracing-off")
    out = []
    for sample, bound in (("0%", None), ("10%", 0.10), ("100%", None)):
        on = find(rows, "tracing", f"tracing-{sample}")
        costs = (_cost(ratio(on, off)), _cost(cpu_ratio(on, off)))
        if bound is None:
            what, met = f"tracing, {sample} sampled: its cost (reported)", None
        else:
            what = f"tracing, {sample} sampled, costs <= {bound:.0%} (tiny JSON)"
            met = None not in costs and max(costs) <= bound
        out.append(
            (
                what,
                _percent(costs[0]) + spread(on, off, cost=True),
                _percent(costs[1]),
                met,
                LIMITS["tracing"],
            )
        )
    return out


def with_database_cpu(row: dict | None) -> dict | None:
    """The row with the database server's CPU in its CPU per request."""
    if row is None or "database_cpu_cores" not in row or not row["req_s"]:
        return None
    cores = row["cpu_cores"] + row["database_cpu_cores"]
    return {**row, "cpu_us_per_req": cores * 1e6 / row["req_s"]}


def databases_table(rows: list, on: str) -> list[str]:
    """Each configuration of the database scenarios on database `on` beside itself
    on the default one, and each against the better WSGI configuration on either."""
    names = DATABASES[DEFAULT_DATABASE], DATABASES[on]
    lines = [
        f"| scenario | configuration | {names[0]} req/s | {names[1]} req/s "
        f"| {names[1]} / {names[0]} | by the app's CPU per request "
        "| by the app's and the database server's "
        f"| {names[0]}: x better WSGI on {names[0]} "
        f"| {names[1]}: x better WSGI on {names[0]} "
        f"| {names[1]}: x better WSGI on {names[1]} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["scenario"] not in ON_EVERY_DATABASE or database(row) != on:
            continue
        scenario = row["scenario"]
        default = find(rows, scenario, row["config"], row["via"])
        ours = None if "failed" in row else row
        wsgi = better_wsgi(rows, scenario), better_wsgi(rows, scenario, on)
        lines.append(
            f"| {scenario} | {row['config']} "
            f"| {_n(default and default['req_s'])} | {_n(ours and ours['req_s'])} "
            f"| {_x(ratio(ours, default))} | {_x(cpu_ratio(ours, default))} "
            f"| {_x(cpu_ratio(with_database_cpu(ours), with_database_cpu(default)))} "
            f"| {_x(ratio(default, wsgi[0]))} | {_x(ratio(ours, wsgi[0]))} "
            f"| {_x(ratio(ours, wsgi[1]))} |"
        )
    return lines


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


def plot_idle(rows: list, scenario: str, path: Path) -> None:
    """Memory per connection and idle CPU against connections held, per server."""
    shown = [r for r in rows if r["scenario"] == scenario and "failed" not in r]
    figure, (memory, cpu) = plt.subplots(1, 2, figsize=(10, 3.5))
    for row in shown:
        held = [p["held"] for p in row["points"]]
        server = row["config"].removeprefix("service-")
        memory.plot(
            held, [p["kib_per_connection"] for p in row["points"]], "o-", label=server
        )
        cpu.plot(
            held, [p["idle_cpu_cores"] * 100 for p in row["points"]], "o-", label=server
        )
    memory.axhline(20, color="#b04040", linestyle="--", label="target: 20 KiB")
    memory.set_ylabel("KiB per connection (lower is better)")
    cpu.set_ylabel("server CPU while idle, % of a core")
    for axes in (memory, cpu):
        axes.set_xlabel(f"idle {IDLE[scenario]} held by one worker")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"Idle {IDLE[scenario]}, one worker", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def broadcast_label(row: dict) -> str:
    server = row["config"].removeprefix("service-")
    label = f"{row['subscribers']:,} {BROADCAST[row['kind']]}, {server}"
    if row.get("gc_thresholds"):
        label += f", Python's GC thresholds ({row['gc_thresholds']})"
    return label


def plot_broadcast(rows: list, spacing: float, path: Path) -> None:
    """The distribution of delivery times over subscribers and events, and each
    event's time to its last subscriber."""
    shown = [r for r in rows if r["scenario"] == "broadcast" and "failed" not in r]
    # One legend under both panels: one per panel would hide their lines.
    figure, (spread, lasts) = plt.subplots(
        1, 2, figsize=(10, 3.8 + 0.2 * len(shown) / 2)
    )
    for row in shown:
        spread.plot(row["delay_percentiles_ms"], range(101), label=broadcast_label(row))
        lasts.plot(
            range(1, len(row["events"]) + 1),
            [e["last_ms"] for e in row["events"]],
            "o-",
            markersize=3,
        )
    spread.set_xlabel("ms from the publishing request to the subscriber")
    spread.set_ylabel("% of deliveries (subscribers x events)")
    lasts.set_xlabel(f"event ({spacing:g} s apart)")
    lasts.set_ylabel("ms to its last subscriber (lower is better)")
    for axes in (spread, lasts):
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    figure.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.suptitle("One event to many subscribers, 2 workers, Redis", fontsize=10)
    figure.tight_layout(rect=(0, 0.06 + 0.045 * len(shown) / 2, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(run: dict, out: Path) -> None:
    rows, m = run["rows"], run["machine"]
    http = {k: v for k, v in HTTP_SCENARIOS.items() if _ran(rows, k)}
    for scenario in http:
        plot_http(rows, scenario, out / f"{scenario}.png")
    for scenario in IDLE:
        if _ran(rows, scenario):
            plot_idle(rows, scenario, out / f"{scenario}.png")
    if _ran(rows, "broadcast"):
        plot_broadcast(
            rows, run["settings"]["broadcast_spacing"], out / "broadcast.png"
        )
    s = run["settings"]
    lines = [
        "# Benchmark results",
        "",
        f"One {run['mode']} run of `tests/bench.sh`, started {run['started']}, "
        f"{run['minutes']} minutes. Each HTTP cell: {s['warmup']} s of warm-up, then "
        f"{s['seconds']} s measured with wrk (2 threads) on the same machine. Load "
        f"average before the run {_load(run['load_before'])}, after "
        f"{_load(run['load_after'])}. Scenarios: {', '.join(run['scenarios'])}.",
        *_template_line(run),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB",
        f"- {m['os']}, kernel {m['kernel']}",
        f"- {m['python']}, Django {m['django']}, Uvicorn {m['uvicorn']}, Granian "
        f"{m['granian']}, Gunicorn {m['gunicorn']}, psycopg {m['psycopg']}",
        f"- Nginx {m['nginx']}, {m['wrk']}, PostgreSQL {m['postgresql']}, {m['redis']}",
        *(
            [
                f"- MariaDB {m['mariadb']}, mysqlclient {m['mysqlclient']}, "
                f"asyncmy {m['asyncmy']}"
            ]
            if "mariadb" in m
            else []
        ),
        "",
        "## Targets",
        "",
        "| target | measured (throughput) | by CPU per request | met "
        "| what limits it when missed |",
        "|---|---|---|---|---|",
    ]
    for target, measured, by_cpu, met, limit in targets(rows):
        # None: a figure reported beside the targets, not one of them.
        verdict = "-" if met is None else "met" if met else "**missed**"
        lines.append(
            f"| {target} | {measured} | {by_cpu} | {verdict} "
            f"| {limit if met is False else ''} |"
        )
    if any(row["config"] == BEFORE for row in rows):
        lines += [
            "",
            f"{BEFORE}: the service generated from the template at commit "
            f"{run['before_commit']}, before its native async data path, with the "
            "same bench files; it reads through Django's async ORM.",
        ]
    for scenario, title in http.items():
        lines += ["", f"## {title}", "", f"![{scenario}]({scenario}.png)", ""]
        lines += http_table(rows, scenario)
        lines += _rounds_lines(rows, scenario)
    for on in DATABASES:
        if on != DEFAULT_DATABASE and any(database(row) == on for row in rows):
            lines += [
                "",
                f"## {DATABASES[on]} beside {DATABASES[DEFAULT_DATABASE]}",
                "",
                f"The same configurations on each database, {DATABASES[on]} / "
                f"{DATABASES[DEFAULT_DATABASE]}: by throughput, by the app's CPU "
                "per request (the tables above), and by that with the database "
                "server's (its processes' CPU over the warm-up and the "
                f"measurement); above 1.00x, {DATABASES[on]} is the faster or the "
                "cheaper. Then each against the better WSGI baseline of its "
                "scenario.",
                "",
            ]
            lines += databases_table(rows, on)
    for scenario in IDLE:
        if _ran(rows, scenario):
            lines += _idle_section(rows, scenario, s)
    if _ran(rows, "sse"):
        lines += _sse_section(rows, s)
    if _ran(rows, "broadcast"):
        lines += _broadcast_section(rows, s)
    if _ran(rows, "recycling"):
        lines += _recycling_section(rows)
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _rounds_lines(rows: list, scenario: str) -> list[str]:
    """Of a scenario measured by turns (scenarios.Cells.alternate), how, and each
    round's throughput."""
    rounded = [r for r in rows if r["scenario"] == scenario and "rounds_req_s" in r]
    if not rounded:
        return []
    count = len(rounded[0]["rounds_req_s"])
    alone = [label(r) for r in rows if r["scenario"] == scenario and r not in rounded]
    but = f" (but {', '.join(alone)}, in a cell of its own)" if alone else ""
    lines = [
        "",
        f"Measured by turns: every configuration of this table{but} "
        f"served at once, each loaded for a second at a time, in {count} rounds "
        "(the order turned each round); a row's throughput is over all its "
        "seconds, its CPU per request that of its processes from the first round "
        "to the last over its requests (so that work a request leaves behind, a "
        "tracing exporter's, counts to it), less their CPU while idle, measured "
        "before the rounds, for the time they waited for their turns. The targets "
        "show the lowest and highest ratio among the rounds. Requests/s of each "
        "round:",
        "",
    ]
    for row in rounded:
        each = " / ".join(_n(v) for v in row["rounds_req_s"])
        lines.append(f"- {label(row)}: {each}")
    return lines


def _idle_section(rows: list, scenario: str, s: dict) -> list[str]:
    lines = [
        "",
        f"## Idle {IDLE[scenario]}, one worker: the curve",
        "",
        f"![{scenario}]({scenario}.png)",
        "",
        "Held at each count, added to those before; the worker's CPU measured "
        f"over {s['idle_cpu_seconds']} s once all were held, memory 2 s after. "
        "The last count is the most the worker's file descriptors leave room for "
        f"(up to {s['idle_most']:,}).",
        "",
        "| configuration | connections | held | errors | seconds to open these "
        "| RSS MiB | KiB per connection | server CPU while idle, % of a core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shown = [row for row in rows if row["scenario"] == scenario]
    for row in shown:
        if "failed" in row:
            lines.append(f"| {row['config']} | failed: {row['failed']} |||||||")
            continue
        for p in row["points"]:
            lines.append(
                f"| {row['config']} | {p['connections']:,} | {p['held']:,} "
                f"| {p['errors']} | {p['open_seconds']:.1f} | {p['rss_mib']:.1f} "
                f"| {p['kib_per_connection']:.1f} | {p['idle_cpu_cores'] * 100:.2f} |"
            )
    lines += [
        "",
        "| configuration | RSS before MiB | RSS with the most held MiB "
        "| RSS after closing them all MiB | worker's file-descriptor room |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in shown:
        if "failed" not in row:
            lines.append(
                f"| {row['config']} | {row['rss_before_mib']:.1f} "
                f"| {row['points'][-1]['rss_mib']:.1f} "
                f"| {row['rss_after_close_mib']:.1f} | {row['file_room']:,} |"
            )
    return lines


def _broadcast_section(rows: list, s: dict) -> list[str]:
    lines = [
        "",
        "## Broadcast: one event to many subscribers, two workers, through Redis",
        "",
        "![broadcast](broadcast.png)",
        "",
        f"{s['broadcast_events']} events, {s['broadcast_spacing']:g} s apart, each "
        "an item created by `POST /api/items` (each request sent on time, "
        "answered or not); a delivery's time runs from just before that request "
        "to the subscriber reading the event (time.time() in every process). CPU "
        "from the first request until the last subscriber had the last event (or "
        "gave up), per event. Subscribers the service refused while they opened "
        "were opened again, as clients reconnect (refused).",
        "",
        "| subscribers | held (per worker) | refused while opening | lost "
        "| delivery p50 ms | p99 ms | last subscriber, p50 / max ms "
        "| publishing request p50 ms | CPU s per event: workers | Redis "
        "| client processes, cores | machine busy, cores |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        if row["scenario"] != "broadcast":
            continue
        if "failed" in row:
            lines.append(
                f"| {broadcast_label(row)} | failed: {row['failed']} |||||||||||"
            )
            continue
        held = " + ".join(f"{w['subscribers']:,}" for w in row["workers"])
        cpu = " + ".join(f"{w['cpu_s_per_event']:.3f}" for w in row["workers"])
        refused = sum(row["refused"].values()) + row["closed_once_open"]
        lines.append(
            f"| {broadcast_label(row)} | {row['held']:,} ({held}) | {refused:,} "
            f"| {row['lost']:,} | {_n(row['p50_ms'])} | {_n(row['p99_ms'])} "
            f"| {_n(row['last_p50_ms'])} / {_n(row['last_max_ms'])} "
            f"| {_n(row['publish_p50_ms'], 1)} | {cpu} "
            f"| {row['redis_cpu_s_per_event']:.3f} "
            f"| {row['clients_cpu_cores']:.2f} | {row['machine_busy_cores']:.2f} |"
        )
    return lines


def _recycling_section(rows: list) -> list[str]:
    lines = [
        "",
        "## Memory given back: workers recycled by their memory limit",
        "",
        "Idle WebSockets opened on two workers whose limit (`WORKER_MAX_RSS_MB`, "
        "for `WORKER_MAX_RSS_SECONDS`) is below what they then hold. Each "
        "worker's resident memory before and 2 s after they were opened, the "
        "seconds from the first opening until the server had replaced each "
        "worker, and the new workers' memory 5 s after the last was replaced. "
        "The clients do not reconnect here.",
        "",
        "| server | WebSockets held (refused while opening) | limit "
        "| RSS before, MiB | RSS held | replaced after, s | new workers' RSS "
        "| still open |",
        "|---|---|---|---|---|---|---|---:|",
    ]
    for row in rows:
        if row["scenario"] != "recycling":
            continue
        server = row["config"].removeprefix("service-")
        if "failed" in row:
            lines.append(f"| {server} | failed: {row['failed']} ||||||")
            continue

        def each(values, digits=0):
            return " + ".join(f"{v:,.{digits}f}" for v in values) or "none"

        lines.append(
            f"| {server} | {row['held']:,} ({sum(row['refused'].values()):,}) "
            f"| {row['limit_mib']} MiB, {row['limit_seconds']} s "
            f"| {each(row['rss_before_mib'])} | {each(row['rss_held_mib'])} "
            f"| {each(row['replaced_after_seconds'], 1)} "
            f"| {each(row['rss_new_mib'])} | {row['still_open']:,} |"
        )
    return lines


def _sse_section(rows: list, s: dict) -> list[str]:
    lines = [
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
    return lines


def _template_line(run: dict) -> list[str]:
    """What the services were generated from (runs since it was recorded)."""
    if "template" not in run:
        return []
    template = run["template"]
    changed = template["uncommitted"]
    line = f"The services were generated from commit {template['commit']}"
    if changed:
        line += f", with uncommitted changes to {', '.join(changed)}"
    return ["", line + "."]


def _load(average: list) -> str:
    return " / ".join(f"{value:.2f}" for value in average) + " (1/5/15 min)"
