"""The chaos run's summary: printed lines and the Markdown results file."""

from __future__ import annotations

from typing import Any

import orjson

from chaos import gaps


def summary_lines(r: dict[str, Any]) -> list[str]:
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines = [
        f"chaos run {verdict}: seed {r['seed']}, {r['events']} events over {r['accounts']} "
        f"accounts, wall time {r['wall_time_s']} s",
        f"  chaos: {r['kills']} SIGKILLs + {r['restarts']} restarts, "
        f"{r['killed_for_good']} worker killed for good, PostgreSQL down "
        f"{r['postgres_down_s']} s, {r['kafka_restarts']} broker restart(s), "
        f"{len(r['unexpected_exits'])} unexpected exit(s), {r['relay_kills']} relay exit(s) "
        f"after a commit, broker restart in an open transaction "
        f"{r['kafka_restart_in_transaction']}",
        f"  DLQ {r['dlq']} ({r['poison_share']:.2%} of input), input re-sends skipped "
        f"{r['input_resends_skipped']}, duplicates on output topics "
        f"{r['duplicates_on_output_topics']}, read_committed repeats "
        f"{r['duplicates_read_committed']}, aborted records (read_uncommitted only) "
        f"{r['aborted_records_read_uncommitted']}",
        f"  mismatches {r['mismatches']} {r['mismatches_by_category'] or ''}, lag {r['lag']}, "
        f"outbox unsent {r['outbox_unsent']}, exit codes at SIGTERM {r['sigterm_exit_codes']}",
        f"  phases (s): {r['phases_s']}",
        f"  group outage while lots expire: {r.get('outage')}, usage of those lots "
        f"{r.get('expiry_usage_arrivals')}",
        f"  hostile records: {_hostile_line(r)}",
        f"  state digest: {r.get('digest')}",
        f"  reference digest (same input, no worker faults): {r.get('digest_reference')} "
        f"equal={r.get('digests_equal')}",
    ]
    lines += [f"  precondition violated: {p}" for p in r["preconditions_violated"][:10]]
    lines += [f"  {gaps.describe(lost)}" for lost in r.get("lost_ranges", [])[:10]]
    lines += [
        f"  digest difference: {d}"
        for d in r.get("digest_differences (faulty group | reference group)") or []
    ]
    lines += [f"  {line}" for line in r["mismatch_lines"][:20]]
    for diff in r["account_diffs"][:5]:
        lines.append(f"  account {diff['account']}:")
        lines.append(f"    model : {_short(diff['model'])}")
        lines.append(f"    actual: {_short(diff['actual'])}")
    return lines


def _hostile_line(r: dict[str, Any]) -> str:
    kinds = r.get("hostile_by_kind") or {}
    return ", ".join(f"{kind} ({v['code']})" for kind, v in kinds.items()) + (
        f"; on partitions {next(iter(kinds.values()))['partitions']}" if kinds else ""
    )


def _short(value: Any, limit: int = 1500) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[:limit] + " ..."


def render_markdown(r: dict[str, Any]) -> str:
    rows = [
        ("result", "**passed**" if r["passed"] else "**FAILED**"),
        ("date (UTC)", r["date"]),
        ("seed", r["seed"]),
        ("events (records in the input topics)", r["events"]),
        ("accounts", f"{r['accounts']} {r['accounts_by_kind']}"),
        ("workers in one group", r["workers"]),
        ("SIGKILLs with restart", r["kills"]),
        (
            "relay exits between Kafka commit and outbox update (done / armed)",
            f"{r['relay_kills']} / {r['relay_kills_armed']}",
        ),
        ("restarts", r["restarts"]),
        ("workers killed for good", r["killed_for_good"]),
        ("unexpected worker exits", len(r["unexpected_exits"])),
        ("PostgreSQL outage (s)", r["postgres_down_s"]),
        ("broker restarts (s each)", f"{r['kafka_restarts']} {r['kafka_restart_s']}"),
        ("broker restart with a relay transaction open", r["kafka_restart_in_transaction"]),
        ("DLQ records", f"{r['dlq']} ({r['poison_share']:.2%}) {r['dlq_by_code']}"),
        ("input re-sends skipped as duplicates", r["input_resends_skipped"]),
        ("duplicates seen on output topics (by id)", r["duplicates_on_output_topics"]),
        ("repeated messages, read_committed consumer", r["duplicates_read_committed"]),
        ("aborted records (seen by read_uncommitted only)", r["aborted_records_read_uncommitted"]),
        ("expected", r["expected"]),
        ("mismatches", f"{r['mismatches']} {r['mismatches_by_category'] or ''}"),
        (
            "disagreements with the independent reference model (chaos/oracle.py)",
            r.get("oracle_disagreements"),
        ),
        ("group outage while lots expire", r.get("outage")),
        ("usage of the expiring lots, by arrival", r.get("expiry_usage_arrivals")),
        ("hostile records (kind and code; partitions of each input)", _hostile_line(r)),
        ("state digest", f"`{r.get('digest')}`"),
        (
            "state digest of the reference group (same input log, no worker faults)",
            f"`{r.get('digest_reference')}` (equal: {r.get('digests_equal')})",
        ),
        ("preconditions violated", len(r["preconditions_violated"])),
        ("consumer lag at the end", r["lag"]),
        ("outbox unsent at the end", r["outbox_unsent"]),
        ("exit codes at SIGTERM", r["sigterm_exit_codes"]),
        ("wall time (s)", r["wall_time_s"]),
        ("phases (s)", r["phases_s"]),
    ]
    out = [
        "# Chaos run",
        "",
        "Produced by `make chaos` (`python -m chaos.runner`); the JSON next to this",
        "file has every figure and the chaos timeline.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    out += [f"| {name} | {value} |" for name, value in rows]
    out += [
        "",
        "## Records by kind",
        "",
        "```",
        _short(r["records_by_label"], 4000),
        "```",
        "",
        "## Chaos timeline",
        "",
        "| t (s) | action | details |",
        "|---|---|---|",
    ]
    for e in r["timeline"]:
        details = {k: v for k, v in e.items() if k not in ("t_s", "action")}
        out.append(f"| {e['t_s']} | {e['action']} | {details or ''} |")
    if r["mismatch_lines"] or r["preconditions_violated"]:
        out += ["", "## Differences", "", "```"]
        out += r["preconditions_violated"][:20] + r["mismatch_lines"][:50]
        out += ["```"]
    return "\n".join(out)
