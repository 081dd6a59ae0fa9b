//! The markdown table: every figure beside its baseline from the same run and the team's target. Built
//! from the JSON results only, so the table and the JSON never disagree.

use serde_json::Value;

use crate::stats::fmt;

struct Row {
    scenario: String,
    figure: String,
    result: String,
    range: String,
    baseline: String,
    target: String,
    met: String,
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn median(summary: &Value) -> f64 {
    num(&summary["median"])
}

fn range(summary: &Value, unit: &str) -> String {
    let (lo, hi) = (num(&summary["min"]), num(&summary["max"]));
    if !lo.is_finite() {
        return "–".into();
    }
    let runs = summary["runs"].as_array().map(Vec::len).unwrap_or(0);
    if runs <= 1 {
        return "(1 run)".into();
    }
    format!("{}–{}{unit}", fmt(lo), fmt(hi))
}

fn verdict(met: Option<bool>, by: String) -> String {
    match met {
        Some(true) => "yes".into(),
        Some(false) => format!("**no** ({by})"),
        None => "–".into(),
    }
}

/// `value <= target`, with how far off when missed.
fn at_most(value: f64, target: f64, unit: &str) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    verdict(
        Some(value <= target),
        format!("{}{unit} over", fmt(value - target)),
    )
}

fn at_least(value: f64, target: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    verdict(
        Some(value >= target),
        format!("{:.0} % of target", 100.0 * value / target),
    )
}

fn status_row(scenario: &str, section: &Value) -> Option<Row> {
    let status = section["status"].as_str().unwrap_or("missing");
    if status == "ok" {
        return None;
    }
    let detail = section["reason"]
        .as_str()
        .or_else(|| section["error"].as_str())
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    Some(Row {
        scenario: scenario.into(),
        figure: status.replace('_', " "),
        result: detail,
        range: String::new(),
        baseline: String::new(),
        target: String::new(),
        met: "–".into(),
    })
}

fn w1_rows(w1: &Value, rows: &mut Vec<Row>) {
    if let Some(row) = status_row("W1", w1) {
        rows.push(row);
        return;
    }
    for (shape, label, target) in [("single", "single-row tx", 1.5), ("bulk", "one tx of", 2.3)] {
        for op in ["insert", "update", "delete"] {
            let phase = &w1["phases"][format!("{shape}/{op}")];
            let ratio = &phase["ratio_capture"];
            let label = if shape == "bulk" {
                format!(
                    "{label} {} rows, {op}",
                    fmt(num(&w1["bulk_transaction_rows"]))
                )
            } else {
                format!("{label}, {op}")
            };
            rows.push(Row {
                scenario: "W1 write overhead".into(),
                figure: format!("{label}: capture ÷ plain, CPU time"),
                result: format!("{}×", fmt(median(ratio))),
                range: range(ratio, "×"),
                baseline: format!(
                    "plain {} µs/row CPU ({} wall); floor trigger {}×; wall-clock ratio {}×",
                    fmt(median(&phase["plain_cpu_us_per_row"])),
                    fmt(median(&phase["plain_us_per_row"])),
                    fmt(median(&phase["ratio_floor"])),
                    fmt(median(&phase["ratio_capture_wall"]))
                ),
                target: format!("≤ {target}×"),
                met: at_most(median(ratio), target, "×"),
            });
        }
    }
}

fn callgrind_rows(cg: &Value, rows: &mut Vec<Row>) {
    if let Some(row) = status_row("W1 instructions", cg) {
        rows.push(row);
        return;
    }
    for op in ["insert", "update", "delete"] {
        let entry = &cg["ops"][op];
        let per = &entry["instructions_per_tx"];
        rows.push(Row {
            scenario: "W1 instructions".into(),
            figure: format!("single-row tx, {op}: capture ÷ plain (callgrind)"),
            result: format!("{}×", fmt(num(&entry["ratio_capture"]))),
            range: format!("{} instr/tx", fmt(num(&per["capture"]))),
            baseline: format!(
                "plain {} instr/tx; floor {}×",
                fmt(num(&per["plain"])),
                fmt(num(&entry["ratio_floor"]))
            ),
            target: "≤ 1.5×".into(),
            met: at_most(num(&entry["ratio_capture"]), 1.5, "×"),
        });
    }
}

fn w2_rows(w2: &Value, rows: &mut Vec<Row>) {
    if let Some(row) = status_row("W2", w2) {
        rows.push(row);
        return;
    }
    for (kind, label) in [("single", "1 server"), ("cluster", "3-server cluster")] {
        let topology = &w2[kind];
        for rate in topology["rates"].as_array().cloned().unwrap_or_default() {
            let r = num(&rate["rate"]);
            let hl = &rate["harmonylite"];
            let raw = &rate["raw_jetstream"];
            let at_1000 = (r - 1000.0).abs() < 0.5;
            let probe = if rate["probe"] == Value::Bool(true) {
                " (probe)"
            } else {
                ""
            };
            let bounded = if rate["bounded"] == Value::Bool(true) {
                ""
            } else {
                ", lag NOT bounded"
            };
            let (p50_target, p50_met) = if at_1000 && kind == "single" {
                (
                    "≤ 1.5 ms".to_string(),
                    at_most(median(&hl["p50_ms"]), 1.5, " ms"),
                )
            } else {
                (String::new(), "–".into())
            };
            rows.push(Row {
                scenario: format!("W2 latency, {label}"),
                figure: format!(
                    "{} rows/s{probe}: commit on A → event on B, C, p50{bounded}",
                    fmt(r)
                ),
                result: format!("{} ms", fmt(median(&hl["p50_ms"]))),
                range: range(&hl["p50_ms"], " ms"),
                baseline: format!(
                    "raw JetStream p50 {} ms; split: commit → stamped on A {} ms, stamped → event {} ms",
                    fmt(median(&raw["p50_ms"])),
                    fmt(median(&rate["breakdown"]["commit_to_stamped_on_a"]["p50_ms"])),
                    fmt(median(&rate["breakdown"]["stamped_on_a_to_event_on_b_c"]["p50_ms"]))
                ),
                target: p50_target,
                met: p50_met,
            });
            let p99_limit = if kind == "single" { 5.0 } else { 10.0 };
            let (p99_target, p99_met) = if at_1000 {
                (
                    format!("≤ {p99_limit} ms"),
                    at_most(median(&hl["p99_ms"]), p99_limit, " ms"),
                )
            } else {
                (String::new(), "–".into())
            };
            rows.push(Row {
                scenario: format!("W2 latency, {label}"),
                figure: format!(
                    "{} rows/s{probe}: p99 (max {} ms)",
                    fmt(r),
                    fmt(median(&hl["max_ms"]))
                ),
                result: format!("{} ms", fmt(median(&hl["p99_ms"]))),
                range: range(&hl["p99_ms"], " ms"),
                baseline: format!(
                    "raw JetStream p99 {} ms; split: {} ms, {} ms",
                    fmt(median(&raw["p99_ms"])),
                    fmt(median(
                        &rate["breakdown"]["commit_to_stamped_on_a"]["p99_ms"]
                    )),
                    fmt(median(
                        &rate["breakdown"]["stamped_on_a_to_event_on_b_c"]["p99_ms"]
                    ))
                ),
                target: p99_target,
                met: p99_met,
            });
        }
        let highest = &topology["highest_bounded_rate"];
        rows.push(Row {
            scenario: format!("W2 latency, {label}"),
            figure: "highest rate tried with bounded lag".into(),
            result: if highest.is_null() {
                "none".into()
            } else {
                format!("{} rows/s", fmt(num(highest)))
            },
            range: format!(
                "tried up to {} rows/s",
                fmt(num(&topology["highest_rate_tried"]))
            ),
            baseline: String::new(),
            target: String::new(),
            met: "–".into(),
        });
    }
}

fn w3_rows(w3: &Value, w1: &Value, rows: &mut Vec<Row>) {
    if let Some(row) = status_row("W3", w3) {
        rows.push(row);
        return;
    }
    let raw = &w3["raw_jetstream"];
    let raw_text = format!(
        "raw JetStream {} msg/s publish+consume ({} publish only, {} one per round trip)",
        fmt(median(&raw["publish_and_consume_msgs_per_s"])),
        fmt(median(&raw["publish_msgs_per_s"])),
        fmt(median(&raw["one_publish_per_round_trip_msgs_per_s"])),
    );
    for size in w3["by_tx_size"].as_array().cloned().unwrap_or_default() {
        let tx = num(&size["tx_rows"]);
        let e2e = &size["end_to_end_rows_per_s"];
        let (target, met) = if tx >= 100.0 {
            (
                "≥ 50,000 rows/s".to_string(),
                at_least(median(e2e), 50_000.0),
            )
        } else {
            (String::new(), "–".into())
        };
        rows.push(Row {
            scenario: "W3 throughput".into(),
            figure: format!(
                "{} rows in tx of {}: end to end (A → B and C identical)",
                fmt(num(&w3["rows_per_run"])),
                fmt(tx)
            ),
            result: format!("{} rows/s", fmt(median(e2e))),
            range: range(e2e, ""),
            baseline: raw_text.clone(),
            target,
            met,
        });
        let commit = &size["a_commit_rows_per_s"];
        // Single-row transactions: the same app writes without a replica running (W1, same run).
        let alone = if tx <= 1.0 && w1["status"] == "ok" {
            let insert = &w1["phases"]["single/insert"];
            format!(
                "W1, no replica running: plain {} tx/s, capture {} tx/s (wall)",
                fmt(1e6 / median(&insert["plain_us_per_row"])),
                fmt(1e6 / median(&insert["capture_us_per_row"]))
            )
        } else {
            String::new()
        };
        rows.push(Row {
            scenario: "W3 throughput".into(),
            figure: format!(
                "tx of {}: A's commit rate with replication live ({} rows/message)",
                fmt(tx),
                fmt(median(&size["rows_per_message"]))
            ),
            result: format!("{} rows/s", fmt(median(commit))),
            range: range(commit, ""),
            baseline: alone,
            target: String::new(),
            met: "–".into(),
        });
    }
}

fn w4_rows(w4: &Value, rows: &mut Vec<Row>) {
    if let Some(row) = status_row("W4", w4) {
        rows.push(row);
        return;
    }
    let changes = fmt(num(&w4["changes"]));
    for variant in w4["variants"].as_array().cloned().unwrap_or_default() {
        let config = variant["config"].as_str().unwrap_or("?");
        if variant["converged"] != Value::Bool(true) {
            rows.push(Row {
                scenario: "W4 catch-up".into(),
                figure: format!("C offline during {changes} changes ({config})"),
                result: "**C did not converge: rows lost**".into(),
                range: String::new(),
                baseline: "see the findings in BENCHMARKS.md".into(),
                target: "converges".into(),
                met: "**no**".into(),
            });
            continue;
        }
        let rate = &variant["catch_up_changes_per_s"];
        rows.push(Row {
            scenario: "W4 catch-up".into(),
            figure: format!("C offline during {changes} changes: restart → converged ({config})"),
            result: format!("{} changes/s", fmt(median(rate))),
            range: range(rate, ""),
            baseline: format!(
                "B live: {} changes/s; A commit {} rows/s",
                fmt(median(&variant["live_b_changes_per_s"])),
                fmt(median(&variant["a_commit_rows_per_s"]))
            ),
            target: "≥ 100,000 changes/s".into(),
            met: at_least(median(rate), 100_000.0),
        });
    }
}

fn w5_rows(w5: &Value, rows: &mut Vec<Row>) {
    const TARGET: &str = "1 GB restored and live ≤ 30 s";
    if let Some(row) = status_row("W5 bootstrap", w5) {
        rows.push(Row {
            target: TARGET.into(),
            ..row
        });
        return;
    }
    let run = &w5["runs"][0];
    let gb = median(&w5["db_gb"]);
    let steps = run["d_steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    format!(
                        "{} {} s",
                        s["step"].as_str().unwrap_or("?"),
                        fmt(num(&s["s"]))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let live_per_gb = median(&w5["live_s_per_gb"]);
    rows.push(Row {
        scenario: "W5 bootstrap".into(),
        figure: format!(
            "new node, {} GB database ({} rows of ~1 KB; snapshot {} MB): spawn → live (restored + {} rows replayed), per GB",
            fmt(gb),
            fmt(num(&w5["rows"])),
            fmt(num(&run["snapshot_bytes"]) / 1e6),
            fmt(num(&w5["tail_rows"]))
        ),
        result: format!("{} s/GB", fmt(live_per_gb)),
        range: range(&w5["live_s_per_gb"], " s/GB"),
        baseline: format!(
            "live {} s; restore (open returned) {} s: {steps}; tail replay {} s; A: save {} s",
            fmt(median(&w5["live_s"])),
            fmt(median(&w5["restore_s"])),
            fmt(num(&run["tail_replay_s"])),
            fmt(num(&run["save_s"]))
        ),
        target: TARGET.into(),
        met: at_most(live_per_gb, 30.0, " s/GB"),
    });
}

fn memory_rows(memory: &Value, rows: &mut Vec<Row>) {
    if let Some(row) = status_row("Memory", memory) {
        rows.push(row);
        return;
    }
    let w3 = num(&memory["w3_max_node_peak_rss_mb"]);
    rows.push(Row {
        scenario: "Memory".into(),
        figure: "W3: peak RSS of the largest node process".into(),
        result: format!("{} MB", fmt(w3)),
        range: memory["w3_nodes"].to_string().replace('"', ""),
        baseline: format!(
            "nats-server {} MB",
            fmt(num(&memory["w3_nats_server_peak_rss_mb"]))
        ),
        target: "≤ 100 MB".into(),
        met: at_most(w3, 100.0, " MB"),
    });
    let w4 = num(&memory["w4_catching_up_node_peak_rss_mb"]);
    rows.push(Row {
        scenario: "Memory".into(),
        figure: "W4: peak RSS of C while catching up".into(),
        result: format!("{} MB", fmt(w4)),
        range: memory["w4_catching_up_by_config"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        baseline: format!(
            "A {} MB, B {} MB",
            fmt(num(&memory["w4_a_peak_rss_mb"])),
            fmt(num(&memory["w4_b_peak_rss_mb"]))
        ),
        target: String::new(),
        met: "–".into(),
    });
    let w5 = num(&memory["w5_restoring_node_peak_rss_mb"]);
    if w5.is_finite() {
        rows.push(Row {
            scenario: "Memory".into(),
            figure: "W5: peak RSS of the node restoring a snapshot".into(),
            result: format!("{} MB", fmt(w5)),
            range: String::new(),
            baseline: format!(
                "A while saving: {} MB; database {} GB",
                fmt(num(&memory["w5_saving_node_peak_rss_mb"])),
                fmt(num(&memory["w5_db_gb"]))
            ),
            target: String::new(),
            met: "–".into(),
        });
    }
}

pub fn markdown(results: &Value) -> String {
    let mut rows = Vec::new();
    w1_rows(&results["w1"], &mut rows);
    callgrind_rows(&results["w1_callgrind"], &mut rows);
    w2_rows(&results["w2"], &mut rows);
    w3_rows(&results["w3"], &results["w1"], &mut rows);
    w4_rows(&results["w4"], &mut rows);
    w5_rows(&results["w5"], &mut rows);
    memory_rows(&results["memory"], &mut rows);

    let machine = &results["machine"];
    let mut out = String::new();
    out.push_str(&format!(
        "Mode `{}`, {} · {} cores, {} GB · SQLite {} · {} · commit {} · load average {} → {} · {:.0} s\n\n",
        results["mode"].as_str().unwrap_or("?"),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["memory_gb"],
        machine["sqlite"].as_str().unwrap_or("?"),
        machine["nats_server"].as_str().unwrap_or("nats-server ?"),
        machine["git_commit"].as_str().unwrap_or("?"),
        machine["loadavg_at_start"].as_str().unwrap_or("?"),
        results["loadavg_at_end"].as_str().unwrap_or("?"),
        num(&results["duration_s"]),
    ));
    out.push_str(
        "| Scenario | Figure | Result (median) | min–max | Baseline, same run | Target | Met |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    for row in rows {
        let clean = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            clean(&row.scenario),
            clean(&row.figure),
            clean(&row.result),
            clean(&row.range),
            clean(&row.baseline),
            clean(&row.target),
            clean(&row.met)
        ));
    }
    out
}

/// Replaces the text between the two markers of BENCHMARKS.md with `table`.
pub fn update_benchmarks_md(path: &std::path::Path, table: &str) -> Result<(), String> {
    const BEGIN: &str = "<!-- bench:latest:begin -->";
    const END: &str = "<!-- bench:latest:end -->";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        return Err(format!("{} has no {BEGIN} / {END} markers", path.display()));
    };
    if end < start {
        return Err(format!("{}: markers out of order", path.display()));
    }
    let updated = format!("{}{BEGIN}\n{table}{}", &text[..start], &text[end..]);
    std::fs::write(path, updated).map_err(|e| format!("{}: {e}", path.display()))
}
