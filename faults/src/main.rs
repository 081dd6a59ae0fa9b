//! `faults`: HarmonyLite's own fault campaign (run it through `scripts/faults.sh`).
//!
//! ```text
//! faults campaign --harmonylite BIN --nats-server BIN [--short|--long] [--seed N] [--scenario NAME]...
//!                 [--include-open] [--work DIR] [--keep] [--run-id ID]
//! faults list
//! faults writer --db PATH --ledger PATH --writer N --generation N --seed N --pace-ms N   (internal)
//! faults publish --url URL --kind KIND --shards N --victim NODE                          (internal)
//! faults hog                                                                            (internal)
//! faults fuzz-seeds DIR...        seed corpus of well-formed messages for fuzz/ (see RELIABILITY.md)
//! ```
//!
//! Every scenario prints lost / extra / identical / panics / time to converge; the campaign exits non-zero
//! on any loss, divergence or panic, and ends with `faults: N passed, N failed`.

mod cluster;
mod ledger;
mod net;
mod poison;
mod scenarios;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::SeedableRng;

use cluster::Binaries;
use net::Net;
use scenarios::{Ctx, Mode};

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    fn values(&mut self, name: &str) -> Result<Vec<String>, String> {
        let mut values = Vec::new();
        while let Some(at) = self.rest.iter().position(|a| a == name) {
            if at + 1 >= self.rest.len() {
                return Err(format!("{name} needs a value"));
            }
            values.push(self.rest.remove(at + 1));
            self.rest.remove(at);
        }
        Ok(values)
    }

    fn value(&mut self, name: &str) -> Result<Option<String>, String> {
        Ok(self.values(name)?.pop())
    }

    fn required(&mut self, name: &str) -> Result<String, String> {
        self.value(name)?
            .ok_or_else(|| format!("{name} is required"))
    }

    fn number(&mut self, name: &str) -> Result<Option<u64>, String> {
        self.value(name)?
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}: `{v}` is not a number"))
            })
            .transpose()
    }

    fn done(&self) -> Result<(), String> {
        match self.rest.first() {
            Some(extra) => Err(format!("unexpected argument `{extra}`")),
            None => Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    let mut args = Args {
        rest: argv.collect(),
    };
    let result = match command.as_str() {
        "campaign" => campaign(&mut args),
        "list" => {
            for scenario in scenarios::all() {
                let open = scenario
                    .open
                    .map(|why| format!(" [open: {why}]"))
                    .unwrap_or_default();
                println!("{:<22} {}{open}", scenario.name, scenario.what);
            }
            Ok(true)
        }
        "writer" => run_writer(&mut args).map(|()| true),
        "publish" => run_publish(&mut args).map(|()| true),
        "hog" => {
            writer::hog();
            Ok(true)
        }
        "fuzz-seeds" => poison::write_fuzz_seeds(&args.rest).map(|written| {
            println!("{written} seed files written");
            true
        }),
        other => Err(format!(
            "unknown command `{other}` (campaign, list; writer, publish, hog are internal)"
        )),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("faults: {err}");
            ExitCode::from(2)
        }
    }
}

fn run_writer(args: &mut Args) -> Result<(), String> {
    let parsed = writer::WriterArgs {
        db: PathBuf::from(args.required("--db")?),
        ledger: PathBuf::from(args.required("--ledger")?),
        writer: args.number("--writer")?.unwrap_or(1),
        generation: args.number("--generation")?.unwrap_or(1),
        seed: args.number("--seed")?.unwrap_or(0),
        pace: Duration::from_millis(args.number("--pace-ms")?.unwrap_or(3)),
    };
    args.done()?;
    writer::run(&parsed)
}

fn run_publish(args: &mut Args) -> Result<(), String> {
    let url = args.required("--url")?;
    let kind = args.required("--kind")?;
    let shards = args.number("--shards")?.unwrap_or(1) as u32;
    let victim = args.number("--victim")?.unwrap_or(1);
    args.done()?;
    poison::publish(&url, &kind, shards, victim)
}

fn campaign(args: &mut Args) -> Result<bool, String> {
    let mode = match (args.flag("--short"), args.flag("--long")) {
        (_, true) => Mode::Long,
        _ => Mode::Short,
    };
    let seed = match args.number("--seed")? {
        Some(seed) => seed,
        None => harmonylite::clock::wall_millis() % 1_000_000,
    };
    let wanted = args.values("--scenario")?;
    let include_open = args.flag("--include-open");
    let keep = args.flag("--keep");
    let run_id = args
        .value("--run-id")?
        .unwrap_or_else(|| (std::process::id() % 100_000).to_string());
    let work = args
        .value("--work")?
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("harmonylite-faults-{run_id}")));
    let bins = Binaries {
        harmonylite: PathBuf::from(args.required("--harmonylite")?),
        nats_server: PathBuf::from(args.required("--nats-server")?),
        faults: std::env::current_exe().map_err(|e| e.to_string())?,
    };
    args.done()?;
    for scenario in &wanted {
        if !scenarios::all().iter().any(|s| s.name == scenario) {
            return Err(format!("unknown scenario `{scenario}` (see `faults list`)"));
        }
    }
    let net = match Net::namespaces(&format!("hlf{run_id}"), 3) {
        Ok(net) => net,
        Err(reason) => {
            println!("network namespaces unavailable ({reason}): running on 127.0.0.1; the partition scenario is skipped");
            Net::Local
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    println!(
        "fault campaign: {} mode, seed {seed}, work dir {}",
        if mode == Mode::Short { "short" } else { "long" },
        work.display()
    );
    let ctx = Ctx {
        net: &net,
        bins: &bins,
        work: work.clone(),
        mode,
        seed,
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut skipped = Vec::new();
    let mut results = Vec::new();
    for (index, scenario) in scenarios::all().into_iter().enumerate() {
        let named = wanted.iter().any(|w| w == scenario.name);
        if !wanted.is_empty() && !named {
            continue;
        }
        if let Some(why) = scenario.open.filter(|_| !named && !include_open) {
            skipped.push(format!("{} (open: {why})", scenario.name));
            continue;
        }
        if scenario.needs_namespaces && !net.is_isolated() {
            println!(
                "[{}] SKIPPED: needs network namespaces (`ip netns`), refused here",
                scenario.name
            );
            skipped.push(format!("{} (no network namespaces)", scenario.name));
            continue;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(index as u64 * 7919));
        let scenario_started = Instant::now();
        println!("[{}] {}", scenario.name, scenario.what);
        let outcome = scenario.run(&ctx, &mut rng);
        let seconds = scenario_started.elapsed().as_secs_f64();
        let (ok, line, json) = match &outcome {
            Ok(outcome) => {
                let verdict = &outcome.verdict;
                let line = format!(
                    "rounds={} committed={} required={} uncertain={} lost={} {:?} extra={} {:?} identical={} panics={} converged={} ({seconds:.0} s){}{}{}",
                    outcome.rounds,
                    outcome.committed,
                    verdict.required,
                    outcome.uncertain,
                    verdict.lost_total(),
                    verdict.lost,
                    verdict.extra_total(),
                    verdict.extra,
                    if verdict.identical { "yes" } else { "NO" },
                    outcome.panics.len(),
                    outcome
                        .converge
                        .map(|d| format!("{:.1}s", d.as_secs_f64()))
                        .unwrap_or_else(|| "NEVER".into()),
                    if verdict.lost_examples.is_empty() {
                        String::new()
                    } else {
                        format!(" missing e.g. {:?}", verdict.lost_examples)
                    },
                    outcome
                        .failed_checks
                        .iter()
                        .map(|c| format!("\n    check failed: {c}"))
                        .collect::<String>(),
                    outcome
                        .notes
                        .iter()
                        .map(|n| format!("\n    note: {n}"))
                        .collect::<String>(),
                );
                let json = serde_json::json!({
                    "scenario": scenario.name,
                    "passed": outcome.passed(),
                    "open": scenario.open,
                    "rounds": outcome.rounds,
                    "committed": outcome.committed,
                    "required": verdict.required,
                    "uncertain": outcome.uncertain,
                    "lost": verdict.lost,
                    "extra": verdict.extra,
                    "identical": verdict.identical,
                    "panics": outcome.panics,
                    "converge_s": outcome.converge.map(|d| d.as_secs_f64()),
                    "failed_checks": outcome.failed_checks,
                    "seconds": seconds,
                });
                for panic in outcome.panics.iter().take(5) {
                    println!("    panic: {panic}");
                }
                (outcome.passed(), line, json)
            }
            Err(err) => (
                false,
                format!("ERROR {err} ({seconds:.0} s)"),
                serde_json::json!({"scenario": scenario.name, "passed": false, "open": scenario.open, "error": err}),
            ),
        };
        let verdict = match (ok, scenario.open) {
            (true, _) => "PASS",
            (false, Some(_)) => "FAIL (known open)",
            (false, None) => "FAIL",
        };
        println!("[{}] {verdict} {line}", scenario.name);
        results.push(json);
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    for skip in &skipped {
        println!("skipped: {skip}");
    }
    let summary = serde_json::json!({
        "mode": if mode == Mode::Short { "short" } else { "long" },
        "seed": seed,
        "commit": std::env::var("HARMONYLITE_COMMIT").unwrap_or_default(),
        "seconds": started.elapsed().as_secs_f64(),
        "namespaces": net.is_isolated(),
        "results": results,
        "skipped": skipped,
    });
    let _ = std::fs::write(work.join("results.json"), summary.to_string());
    println!(
        "fault campaign took {:.0} s (seed {seed}; re-run: scripts/faults.sh --seed {seed}{}); results in {}",
        started.elapsed().as_secs_f64(),
        if mode == Mode::Long { " --long" } else { "" },
        work.join("results.json").display()
    );
    println!("faults: {passed} passed, {failed} failed");
    drop(net);
    if failed == 0 && !keep {
        // Only the results stay.
        if let Ok(entries) = std::fs::read_dir(&work) {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    } else {
        println!("logs kept in {}", work.display());
    }
    Ok(failed == 0)
}
