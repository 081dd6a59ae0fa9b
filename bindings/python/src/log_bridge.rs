//! Core log records to Python's `logging`. The core logs through `tracing`, whose `log` feature turns each
//! event into a `log` record; this logger queues the record and one forwarder thread hands it to the Python
//! logger named after the Rust module (`harmonylite.engine`, ...). Queuing means no core thread ever waits
//! for the GIL (the core may log while holding its own locks).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;

/// Records waiting for the forwarder; beyond this, new records are dropped (and counted) rather than block.
const QUEUE: usize = 10_000;

struct Entry {
    level: Level,
    target: String,
    message: String,
    file: Option<String>,
    line: Option<u32>,
}

struct Bridge {
    queue: Mutex<Option<SyncSender<Entry>>>,
    dropped: AtomicUsize,
}

static BRIDGE: Bridge = Bridge {
    queue: Mutex::new(None),
    dropped: AtomicUsize::new(0),
};
static FILTER: AtomicUsize = AtomicUsize::new(LevelFilter::Warn as usize);

fn harmonylite_target(target: &str) -> bool {
    target == "harmonylite" || target.starts_with("harmonylite::")
}

fn filter() -> LevelFilter {
    match FILTER.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

impl Log for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Dependencies (async-nats, tokio) speak only when something is wrong.
        let limit = if harmonylite_target(metadata.target()) {
            filter()
        } else {
            filter().min(LevelFilter::Warn)
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let entry = Entry {
            level: record.level(),
            target: record.target().replace("::", "."),
            message: record.args().to_string(),
            file: record.file().map(str::to_string),
            line: record.line(),
        };
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        if queue.is_none() {
            let (sender, receiver) = sync_channel(QUEUE);
            let started = std::thread::Builder::new()
                .name("harmonylite-log".into())
                .spawn(move || forward(receiver));
            if started.is_err() {
                return;
            }
            *queue = Some(sender);
        }
        if let Some(sender) = queue.as_ref() {
            match sender.try_send(entry) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => *queue = None,
            }
        }
    }

    fn flush(&self) {}
}

fn python_level(level: Level) -> u32 {
    match level {
        Level::Error => 40,
        Level::Warn => 30,
        Level::Info => 20,
        Level::Debug => 10,
        Level::Trace => 5,
    }
}

fn forward(receiver: Receiver<Entry>) {
    while let Ok(entry) = receiver.recv() {
        // During interpreter shutdown there is no one left to tell: the record is dropped.
        let _ = Python::try_attach(|py| {
            if let Err(err) = emit(py, &entry) {
                err.write_unraisable(py, None);
            }
        });
    }
}

fn emit(py: Python<'_>, entry: &Entry) -> PyResult<()> {
    let logging = py.import("logging")?;
    let logger = logging.call_method1("getLogger", (entry.target.as_str(),))?;
    let level = python_level(entry.level);
    if !logger
        .call_method1("isEnabledFor", (level,))?
        .extract::<bool>()?
    {
        return Ok(());
    }
    let dropped = BRIDGE.dropped.swap(0, Ordering::Relaxed);
    let message = if dropped > 0 {
        format!(
            "{} ({dropped} earlier log records were dropped)",
            entry.message
        )
    } else {
        entry.message.clone()
    };
    let record = logger.call_method1(
        "makeRecord",
        (
            entry.target.as_str(),
            level,
            entry.file.as_deref().unwrap_or("<rust>"),
            entry.line.unwrap_or(0),
            message,
            (),
            py.None(),
        ),
    )?;
    logger.call_method1("handle", (record,))?;
    Ok(())
}

static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the bridge as the process's `log` logger (once; another logger already set wins).
pub fn install() {
    INSTALLED.get_or_init(|| {
        let ok = log::set_logger(&BRIDGE).is_ok();
        if ok {
            log::set_max_level(filter());
        }
        ok
    });
}

/// Sets the most verbose level forwarded, from a Python level number (the effective level of the
/// `harmonylite` logger, set by the package whenever a replica opens).
#[pyfunction]
pub fn set_log_level(level: i64) {
    let filter = match level {
        i64::MIN..=5 => LevelFilter::Trace,
        6..=10 => LevelFilter::Debug,
        11..=20 => LevelFilter::Info,
        21..=30 => LevelFilter::Warn,
        31..=40 => LevelFilter::Error,
        _ => LevelFilter::Off,
    };
    FILTER.store(filter as usize, Ordering::Relaxed);
    if INSTALLED.get().copied().unwrap_or(false) {
        log::set_max_level(filter);
    }
}
