//! W1, write-path overhead: the app's own statements on plain SQLite, on the same table under the smallest
//! possible trigger log (the floor), and under HarmonyLite's capture triggers — same process, same
//! settings (WAL, `synchronous=NORMAL`), fresh database files, the modes interleaved within each
//! repetition so drift on a noisy machine hits them alike.
//!
//! Capture is installed with `harmonylite::capture::install`, the engine's own code, and the replica is not
//! running: this isolates what the app pays inside its transaction. (The stamping the replica does later,
//! off the app's path, shows up in W3 as A's commit rate with replication live.) The change log is emptied
//! between phases, untimed, as the replica would do.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::stats::Summary;
use crate::sys::{Ctx, Res};
use crate::workload::{self, body, DELETE, INSERT, UPDATE};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Plain,
    Floor,
    Capture,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Plain, Mode::Floor, Mode::Capture];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Floor => "floor",
            Mode::Capture => "capture",
        }
    }
    fn parse(text: &str) -> Res<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == text)
            .ok_or_else(|| format!("unknown mode {text}"))
    }
}

pub const OPS: [&str; 3] = ["insert", "update", "delete"];

pub struct Params {
    pub single_rows: usize,
    pub bulk_rows: usize,
    pub reps: usize,
    pub callgrind_ops: usize,
    pub callgrind: bool,
}

/// The smallest trigger log: one AFTER trigger per operation writing the key into a rowid table.
const FLOOR_DDL: &str = "
CREATE TABLE floor_log(seq INTEGER PRIMARY KEY, k);
CREATE TRIGGER floor_i AFTER INSERT ON items BEGIN INSERT INTO floor_log(k) VALUES (NEW.id); END;
CREATE TRIGGER floor_u AFTER UPDATE ON items BEGIN INSERT INTO floor_log(k) VALUES (NEW.id); END;
CREATE TRIGGER floor_d AFTER DELETE ON items BEGIN INSERT INTO floor_log(k) VALUES (OLD.id); END;";

/// A fresh database with the table in `mode`, and the app's connection to it.
pub fn prepare(db: &Path, mode: Mode) -> Res<Connection> {
    let mut setup = workload::app_connection(db)?;
    setup
        .execute_batch(workload::SCHEMA)
        .ctx("creating the table")?;
    match mode {
        Mode::Plain => {}
        Mode::Floor => setup.execute_batch(FLOOR_DDL).ctx("floor triggers")?,
        Mode::Capture => {
            harmonylite::capture::create_library_tables(&setup)
                .map_err(|err| format!("library tables: {err}"))?;
            let schema = harmonylite::capture::install(&mut setup, &harmonylite::Config::default())
                .map_err(|err| format!("installing capture: {err}"))?;
            if !schema.tables.contains_key(workload::TABLE) {
                return Err("capture did not select the benchmark table".into());
            }
        }
    }
    drop(setup);
    workload::app_connection(db)
}

fn clear_log(conn: &Connection, mode: Mode) -> Res<()> {
    match mode {
        Mode::Plain => Ok(()),
        Mode::Floor => conn.execute_batch("DELETE FROM floor_log").ctx("clearing"),
        Mode::Capture => conn
            .execute_batch("DELETE FROM __harmonylite__change_log")
            .ctx("clearing"),
    }
}

fn run_op(conn: &Connection, op: &str, id: i64) -> Res<()> {
    let outcome = match op {
        "insert" => conn
            .prepare_cached(INSERT)
            .and_then(|mut s| s.execute(params![id, id % 97, workload::name(id), body(id, 0)])),
        "update" => conn
            .prepare_cached(UPDATE)
            .and_then(|mut s| s.execute(params![id, body(id, 1)])),
        _ => conn
            .prepare_cached(DELETE)
            .and_then(|mut s| s.execute(params![id])),
    };
    let changed = outcome.ctx(op)?;
    if changed != 1 {
        return Err(format!("{op} of row {id} changed {changed} rows"));
    }
    Ok(())
}

/// `rows` single-row transactions (autocommit), the path callgrind measures. Not inlined, so
/// `--toggle-collect` can count exactly this function and what it calls.
#[inline(never)]
pub fn measured_single_row_ops(conn: &Connection, op: &str, rows: usize) -> Res<()> {
    for id in 0..rows as i64 {
        run_op(conn, op, id)?;
    }
    Ok(())
}

/// This thread's CPU time (user + system) in seconds: what the app's own thread spent, unlike wall time
/// not inflated when other processes on a busy machine take the core away.
fn thread_cpu_s() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// One phase's cost per row: wall-clock seconds and thread CPU seconds.
struct Cost {
    phase: String,
    wall: f64,
    cpu: f64,
}

fn timed(phase: String, rows: usize, work: impl FnOnce() -> Res<()>) -> Res<Cost> {
    let (wall, cpu) = (Instant::now(), thread_cpu_s());
    work()?;
    Ok(Cost {
        phase,
        wall: wall.elapsed().as_secs_f64() / rows as f64,
        cpu: (thread_cpu_s() - cpu) / rows as f64,
    })
}

/// Each phase: single-row insert/update/delete, then one bulk transaction of each.
fn one_run(db: &Path, mode: Mode, params: &Params) -> Res<Vec<Cost>> {
    let mut conn = prepare(db, mode)?;
    let mut out = Vec::new();
    for op in OPS {
        out.push(timed(format!("single/{op}"), params.single_rows, || {
            measured_single_row_ops(&conn, op, params.single_rows)
        })?);
        clear_log(&conn, mode)?;
    }
    for op in OPS {
        out.push(timed(format!("bulk/{op}"), params.bulk_rows, || {
            let tx = conn.transaction().ctx("begin")?;
            for id in 0..params.bulk_rows as i64 {
                run_op(&tx, op, id)?;
            }
            tx.commit().ctx("commit")
        })?);
        clear_log(&conn, mode)?;
    }
    Ok(out)
}

pub fn run(root: &Path, params: &Params) -> Res<Value> {
    // Samples per (phase, what): "<mode>_<metric>" costs and "ratio_<mode>_<metric>" ratios to plain,
    // taken within each repetition.
    let mut samples: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    for rep in 0..params.reps {
        let mut per_mode = Vec::new();
        for k in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(rep + k) % Mode::ALL.len()];
            let db = root.join(format!("w1-{rep}-{}.db", mode.name()));
            per_mode.push((mode, one_run(&db, mode, params)?));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
        let Some((_, plain)) = per_mode.iter().find(|(m, _)| *m == Mode::Plain) else {
            return Err("no plain run".into());
        };
        for (mode, costs) in &per_mode {
            for cost in costs {
                let Some(base) = plain.iter().find(|p| p.phase == cost.phase) else {
                    continue;
                };
                for (metric, value, base_value) in
                    [("wall", cost.wall, base.wall), ("cpu", cost.cpu, base.cpu)]
                {
                    let mut push = |key: String, v: f64| {
                        samples
                            .entry((cost.phase.clone(), key))
                            .or_default()
                            .push(v)
                    };
                    push(format!("{}_{metric}", mode.name()), value);
                    if *mode != Mode::Plain {
                        push(
                            format!("ratio_{}_{metric}", mode.name()),
                            value / base_value,
                        );
                    }
                }
            }
        }
    }
    let mut phases = serde_json::Map::new();
    for shape in ["single", "bulk"] {
        for op in OPS {
            let phase = format!("{shape}/{op}");
            let get = |key: &str| {
                Summary::of(
                    samples
                        .get(&(phase.clone(), key.to_string()))
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                )
            };
            let us = |key: &str| {
                Summary::of(&get(key).runs.iter().map(|v| v * 1e6).collect::<Vec<_>>()).json()
            };
            let plain_rate = Summary::of(
                &get("plain_wall")
                    .runs
                    .iter()
                    .map(|v| 1.0 / v)
                    .collect::<Vec<_>>(),
            );
            phases.insert(
                phase.clone(),
                json!({
                    "plain_us_per_row": us("plain_wall"),
                    "floor_us_per_row": us("floor_wall"),
                    "capture_us_per_row": us("capture_wall"),
                    "plain_cpu_us_per_row": us("plain_cpu"),
                    "floor_cpu_us_per_row": us("floor_cpu"),
                    "capture_cpu_us_per_row": us("capture_cpu"),
                    "plain_rows_per_s": plain_rate.json(),
                    "ratio_capture": get("ratio_capture_cpu").json(),
                    "ratio_floor": get("ratio_floor_cpu").json(),
                    "ratio_capture_wall": get("ratio_capture_wall").json(),
                    "ratio_floor_wall": get("ratio_floor_wall").json(),
                }),
            );
        }
    }
    Ok(json!({
        "status": "ok",
        "single_row_transactions": params.single_rows,
        "bulk_transaction_rows": params.bulk_rows,
        "repetitions": params.reps,
        "ratio_metric": "ratio_* are thread CPU time (user + system) per row, capture ÷ plain within each repetition; ratio_*_wall are wall-clock",
        "phases": phases,
    }))
}

// ---------------------------------------------------------------------------------------------------
// Instruction counts of the single-row path (callgrind): they repeat on a noisy machine.

/// The child side: `harmonylite-bench w1-instructions --mode M --op OP --rows N --db PATH`.
pub fn instructions_child(args: &[String]) -> Res<()> {
    let mut mode = None;
    let mut op = None;
    let mut rows = 1000usize;
    let mut db = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = iter.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--mode" => mode = Some(Mode::parse(value)?),
            "--op" => op = Some(value.clone()),
            "--rows" => rows = value.parse().ctx("--rows")?,
            "--db" => db = Some(value.clone()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let (mode, op, db) = (mode.ok_or("--mode")?, op.ok_or("--op")?, db.ok_or("--db")?);
    let conn = prepare(Path::new(&db), mode)?;
    if op != "insert" {
        // The rows to update or delete, outside the counted function.
        setup_rows(&conn, mode, rows)?;
    }
    measured_single_row_ops(&conn, &op, rows)
}

fn setup_rows(conn: &Connection, mode: Mode, rows: usize) -> Res<()> {
    conn.execute_batch("BEGIN").ctx("begin")?;
    for id in 0..rows as i64 {
        run_op(conn, "insert", id)?;
    }
    conn.execute_batch("COMMIT").ctx("commit")?;
    clear_log(conn, mode)
}

fn callgrind_total(file: &Path) -> Res<u64> {
    let text = std::fs::read_to_string(file).ctx("reading callgrind output")?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| "no totals in the callgrind output".to_string())
}

pub fn callgrind(root: &Path, params: &Params) -> Value {
    if !params.callgrind {
        return json!({"status": "skipped", "reason": "skipped in --quick (valgrind is slow)"});
    }
    let available = Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !available {
        return json!({"status": "unavailable", "reason": "valgrind is not installed"});
    }
    match callgrind_inner(root, params) {
        Ok(value) => value,
        Err(err) => json!({"status": "error", "error": err}),
    }
}

fn callgrind_inner(root: &Path, params: &Params) -> Res<Value> {
    let exe = std::env::current_exe().ctx("locating the bench binary")?;
    let rows = params.callgrind_ops;
    let mut ops = serde_json::Map::new();
    for op in OPS {
        let mut per_mode = serde_json::Map::new();
        for mode in Mode::ALL {
            let db = root.join(format!("cg-{op}-{}.db", mode.name()));
            let out = root.join(format!("cg-{op}-{}.out", mode.name()));
            let status = Command::new("valgrind")
                .arg("--tool=callgrind")
                .arg("--toggle-collect=*measured_single_row_ops*")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&exe)
                .args(["w1-instructions", "--mode", mode.name(), "--op", op])
                .args(["--rows", &rows.to_string()])
                .arg("--db")
                .arg(&db)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .ctx("running valgrind")?;
            if !status.success() {
                return Err(format!("valgrind {op} {}: {status}", mode.name()));
            }
            let per_row = callgrind_total(&out)? as f64 / rows as f64;
            per_mode.insert(mode.name().into(), json!(per_row.round()));
        }
        let get = |k: &str| per_mode.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let (plain, floor, capture) = (get("plain"), get("floor"), get("capture"));
        ops.insert(
            op.into(),
            json!({
                "instructions_per_tx": per_mode,
                "ratio_floor": crate::stats::round(floor / plain),
                "ratio_capture": crate::stats::round(capture / plain),
            }),
        );
    }
    Ok(json!({
        "status": "ok",
        "tool": "valgrind --tool=callgrind --toggle-collect (only the single-row loop is counted)",
        "transactions": rows,
        "ops": ops,
    }))
}
