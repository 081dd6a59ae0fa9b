//! Snapshots: a consistent copy of the database, stripped of node identity, recording the stream positions
//! and clock it covers; uploaded atomically (object, then manifest, then the `latest` pointer); restored at
//! open when a node is new, corrupted or behind the stream's retention — keeping its unpublished changes.

pub mod nats_store;
pub mod service;
pub mod store;
pub mod stores;

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::signing::{ClusterKeys, SignatureError};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::apply::applier::apply_batch_any_origin;
use crate::capture::{self, Schema};
use crate::clock::{wall_millis, Clock};
use crate::config::Config;
use crate::error::{Error, Result, SqlContext};
use crate::log::decode;
use crate::publish::stamp::{stamp_pending, StampSettings};
use crate::state::{meta, outbox, positions::read_all as read_positions};
pub use nats_store::{Lease, NatsObjectStore};
pub use store::SnapshotStore;
pub use stores::dir::DirStore;

pub const FORMAT: u32 = 1;
const PREFIX: &str = "snapshot-";
const LATEST: &str = "latest.json";

/// What a snapshot covers. Stored as `snapshot-<hlc>-<node>.json` beside its data object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Key of the zstd-compressed database in the store.
    pub object: String,
    pub created_ms: u64,
    /// The node that made it (its identity is not inside the snapshot).
    pub node_id: u64,
    /// The creating node's clock when it was taken.
    pub hlc: u64,
    /// Stream position per shard that the data includes; a restoring node replays from here.
    pub positions: BTreeMap<u32, u64>,
    pub schema_hash: String,
    /// Compressed size and its SHA-256 (hex).
    pub bytes: u64,
    pub sha256: String,
    pub raw_bytes: u64,
    /// With a cluster key (`[signing]`): an HMAC of the rest of the manifest, which holds the data's
    /// SHA-256, so a node restores only a snapshot that a holder of the key made (docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What a manifest's signature is computed over besides its bytes: it keeps a manifest's signature apart
/// from any replication message's (whose ids never take this form).
const MANIFEST_SIGNED_AS: &str = "harmonylite-snapshot-manifest";

impl Manifest {
    fn key(&self) -> String {
        self.object.trim_end_matches(".db.zst").to_string() + ".json"
    }

    /// The bytes the signature covers: the manifest without its signature (serde_json writes the fields in
    /// declaration order and the positions map sorted, so every node computes the same bytes).
    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Manifest {
            signature: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    /// Signs the manifest with the cluster key.
    pub fn sign(&mut self, keys: &ClusterKeys) {
        self.signature = Some(keys.sign(MANIFEST_SIGNED_AS, &self.signed_bytes()));
    }

    /// Whether a node holding `keys` may restore this snapshot.
    pub fn verify(&self, keys: &ClusterKeys) -> std::result::Result<(), SignatureError> {
        keys.verify(
            MANIFEST_SIGNED_AS,
            &self.signed_bytes(),
            self.signature.as_deref(),
        )
    }
}

// Progress of a snapshot being saved or restored, for logs and `status()`: declared in `records` (the list
// the bindings expand too).
pub use crate::records::SnapshotProgress;

pub type ProgressHandle = Arc<Mutex<SnapshotProgress>>;

fn set_phase(progress: &ProgressHandle, phase: &str, done: u64, total: u64) {
    if let Ok(mut p) = progress.lock() {
        p.phase = phase.to_string();
        p.bytes_done = done;
        p.bytes_total = total;
    }
    info!(
        phase,
        bytes_done = done,
        bytes_total = total,
        "snapshot progress"
    );
}

/// One line per finished step with its duration: operators see where a restore spends its time, and the
/// benchmark (W5) reads the same lines.
fn log_step(step: &str, started: Instant, bytes: u64) {
    info!(
        step,
        elapsed_ms = started.elapsed().as_millis() as u64,
        bytes,
        "snapshot step done"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hash of the user schema (tables, indexes, columns), so a restore can say which schema it brings.
fn schema_hash(conn: &Connection) -> Result<String> {
    let sql: Vec<String> = conn
        .prepare(
            "SELECT coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             AND name NOT LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\' ORDER BY type, name",
        )
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>())
        .ctx("reading the schema")?;
    Ok(sha256_hex(sql.join("\n").as_bytes()))
}

fn temp_path(work_dir: &Path, name: &str) -> PathBuf {
    temp_path_with(work_dir, name, "db")
}

fn temp_path_with(work_dir: &Path, name: &str, extension: &str) -> PathBuf {
    work_dir.join(format!(
        "{name}-{}-{}.{extension}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// A file in the work directory that is deleted (with any SQLite journal beside it) when dropped, so that
/// every path out of a save or a restore — success, error, rejection, a cancelled task — cleans up.
#[derive(Debug)]
pub struct WorkFile {
    path: PathBuf,
}

impl WorkFile {
    fn new(path: PathBuf) -> WorkFile {
        WorkFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkFile {
    fn drop(&mut self) {
        remove_db_files(&self.path);
    }
}

/// Passes writes through and keeps the SHA-256 and count of the bytes written, so a file's checksum comes
/// with writing it instead of a second read.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and SHA-256 (hex) of a file, read in blocks.
fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let mut writer = HashingWriter::new(std::io::sink());
    let mut file = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    std::io::copy(&mut file, &mut writer)?;
    let (_, sha, len) = writer.finish();
    Ok((len, sha))
}

/// Decompresses `packed` into a new file `out`, refusing to write more than `limit` bytes (a bad or
/// hostile object cannot fill the disk); returns the decompressed size.
fn decompress_file(packed: &Path, out: &Path, limit: u64) -> std::result::Result<u64, String> {
    let input =
        std::fs::File::open(packed).map_err(|err| format!("{}: {err}", packed.display()))?;
    let decoder = zstd::stream::read::Decoder::new(input).map_err(|err| err.to_string())?;
    let file = std::fs::File::create(out).map_err(|err| format!("{}: {err}", out.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let copied = std::io::copy(&mut decoder.take(limit.saturating_add(1)), &mut writer)
        .map_err(|err| err.to_string())?;
    writer
        .flush()
        .map_err(|err| format!("{}: {err}", out.display()))?;
    if copied > limit {
        return Err(format!("decompressed size exceeds {limit} bytes"));
    }
    Ok(copied)
}

/// Compresses `raw` into a new file `out` (zstd level 3, streamed); returns the compressed size and SHA-256.
fn compress_file(raw: &Path, out: &Path) -> std::io::Result<(u64, String)> {
    let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(raw)?);
    let file = std::fs::File::create(out)?;
    let mut encoder = zstd::stream::Encoder::new(
        HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
        3,
    )?;
    std::io::copy(&mut input, &mut encoder)?;
    let (writer, sha, len) = encoder.finish()?.finish();
    writer.into_inner().map_err(|err| err.into_error())?;
    Ok((len, sha))
}

fn remove_db_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// Blocking: a consistent, stripped, compressed copy of `db`, as a file in `work_dir` (deleted when the
/// returned [`WorkFile`] is dropped). `VACUUM INTO` reads in one read transaction, so the app keeps writing
/// meanwhile (WAL); node identity and per-node queues are removed from the copy. Every step streams
/// between files: memory does not grow with the database.
pub fn build(db: &Path, work_dir: &Path, node_id: u64) -> Result<(WorkFile, Manifest)> {
    std::fs::create_dir_all(work_dir).map_err(|err| Error::io(work_dir.display(), err))?;
    let copy = temp_path(work_dir, "snapshot");
    let compact = temp_path(work_dir, "snapshot-compact");
    let packed = WorkFile::new(temp_path_with(work_dir, "snapshot", "db.zst"));
    let result = (|| {
        let started = Instant::now();
        let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ctx("opening the database for a snapshot")?;
        crate::connection::set_busy_timeout(&source, Duration::from_secs(30))
            .ctx("busy timeout")?;
        source
            .execute("VACUUM INTO ?1", [copy.display().to_string()])
            .ctx("copying the database (VACUUM INTO)")?;
        drop(source);
        let conn = Connection::open(&copy).ctx("opening the snapshot copy")?;
        // secure_delete zeroes the pages the strip frees, so they compress to nothing when the copy is not
        // compacted; the rollback journal keeps every change inside the file that is then compressed.
        conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA secure_delete = ON;")
            .ctx("preparing the snapshot copy")?;
        capture::create_library_tables(&conn)?;
        crate::state::strip_node_state(&conn)?;
        let positions = read_positions(&conn)?;
        let hlc: i64 = meta::get(&conn, "hlc")?.unwrap_or(0);
        let schema_hash = schema_hash(&conn)?;
        let page_count = |pragma: &str| -> Result<i64> {
            conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .ctx("measuring the snapshot copy")
        };
        let (free, pages) = (page_count("freelist_count")?, page_count("page_count")?);
        // A second full copy only pays when the strip freed much (a large outbox after a long NATS outage):
        // for 1.26 GB it took 5 of the 17 s of a save (bench W5). Compacted into another file rather than by
        // a plain VACUUM, which rebuilds the database in a temporary database the bundled SQLite keeps in
        // memory (SQLITE_TEMP_STORE=2).
        let data = if free * 10 > pages {
            conn.execute("VACUUM INTO ?1", [compact.display().to_string()])
                .ctx("compacting the snapshot")?;
            drop(conn);
            remove_db_files(&copy);
            &compact
        } else {
            drop(conn);
            &copy
        };
        let raw_bytes = std::fs::metadata(data)
            .map_err(|err| Error::io(data.display(), err))?
            .len();
        log_step("copy", started, raw_bytes);
        let started = Instant::now();
        let (bytes, sha256) = compress_file(data, packed.path()).map_err(|err| {
            Error::Snapshot(format!(
                "compressing {} into {}: {err}",
                data.display(),
                packed.path().display()
            ))
        })?;
        log_step("compress", started, bytes);
        let hlc = hlc.max(0) as u64;
        let object = format!("{PREFIX}{hlc:020}-{node_id}.db.zst");
        let manifest = Manifest {
            format: FORMAT,
            object,
            created_ms: wall_millis(),
            node_id,
            hlc,
            positions,
            schema_hash,
            bytes,
            sha256,
            raw_bytes,
            signature: None,
        };
        Ok(manifest)
    })();
    remove_db_files(&copy);
    remove_db_files(&compact);
    result.map(|manifest| (packed, manifest))
}

/// Uploads a built snapshot: data object, then manifest, then the `latest` pointer (a crash in between leaves
/// the previous snapshot usable), then deletes all but the newest `keep`.
///
/// The data is streamed from `packed`, which is deleted when this returns (success or not).
/// Uploads a built snapshot: the data, then its manifest (signed when `keys` is given), then `latest`.
/// Returns the manifest as stored.
pub async fn upload(
    store: &dyn SnapshotStore,
    packed: WorkFile,
    manifest: &Manifest,
    keep: u32,
    progress: &ProgressHandle,
    keys: Option<&ClusterKeys>,
) -> Result<Manifest> {
    let mut stored = manifest.clone();
    if let Some(keys) = keys {
        stored.sign(keys);
    }
    let manifest = &stored;
    let total = manifest.bytes;
    set_phase(progress, "uploading", 0, total);
    let started = Instant::now();
    store.put_file(&manifest.object, packed.path()).await?;
    drop(packed);
    log_step("upload", started, total);
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|err| Error::Internal(err.to_string()))?;
    store.put(&manifest.key(), json.clone()).await?;
    store.put(LATEST, json).await?;
    set_phase(progress, "idle", total, total);
    if let Ok(mut p) = progress.lock() {
        p.saved = Some(manifest.object.clone());
        p.saved_at_ms = Some(wall_millis());
    }
    info!(store = %store.describe(), object = %manifest.object, bytes = total, "snapshot uploaded");
    prune(store, keep).await?;
    Ok(stored)
}

async fn manifest_keys_newest_first(store: &dyn SnapshotStore) -> Result<Vec<String>> {
    let mut keys: Vec<String> = store
        .list(PREFIX)
        .await?
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .collect();
    // Names embed the zero-padded clock, so name order is age order.
    keys.sort();
    keys.reverse();
    Ok(keys)
}

async fn prune(store: &dyn SnapshotStore, keep: u32) -> Result<()> {
    for key in manifest_keys_newest_first(store)
        .await?
        .into_iter()
        .skip(keep as usize)
    {
        let object = key.trim_end_matches(".json").to_string() + ".db.zst";
        store.delete(&object).await?;
        store.delete(&key).await?;
        info!(object = %object, "old snapshot deleted");
    }
    Ok(())
}

/// Snapshots in the store, newest first (`latest` first when it parses).
pub async fn list_manifests(store: &dyn SnapshotStore) -> Result<Vec<Manifest>> {
    let mut manifests: Vec<Manifest> = Vec::new();
    let push = |bytes: Vec<u8>, manifests: &mut Vec<Manifest>| match serde_json::from_slice::<
        Manifest,
    >(&bytes)
    {
        Ok(m) if !manifests.iter().any(|x| x.object == m.object) => manifests.push(m),
        Ok(_) => {}
        Err(err) => warn!(error = %err, "unreadable snapshot manifest ignored"),
    };
    if let Some(latest) = store.get(LATEST).await? {
        push(latest, &mut manifests);
    }
    for key in manifest_keys_newest_first(store).await? {
        if let Some(bytes) = store.get(&key).await? {
            push(bytes, &mut manifests);
        }
    }
    manifests.sort_by(|a, b| b.hlc.cmp(&a.hlc).then(b.created_ms.cmp(&a.created_ms)));
    Ok(manifests)
}

/// Downloads the newest snapshot whose checksum matches, trying older ones after a bad one, and returns
/// it decompressed into a database file in `work_dir` (deleted when the [`WorkFile`] is dropped). Data
/// streams store → file → file: memory does not grow with the snapshot.
/// With `keys`, only a snapshot whose manifest is signed with one of them is taken (docs/security.md).
pub async fn fetch_newest_valid(
    store: &dyn SnapshotStore,
    work_dir: &Path,
    progress: &ProgressHandle,
    keys: Option<&ClusterKeys>,
) -> Result<Option<(Manifest, WorkFile)>> {
    let manifests = list_manifests(store).await?;
    if manifests.is_empty() {
        return Ok(None);
    }
    let mut rejected = Vec::new();
    for manifest in manifests {
        if manifest.format != FORMAT {
            rejected.push(format!(
                "{}: unknown format {}",
                manifest.object, manifest.format
            ));
            continue;
        }
        if let Some(Err(err)) = keys.map(|keys| manifest.verify(keys)) {
            warn!(object = %manifest.object, error = %err, "snapshot refused: its manifest's signature; trying an older one");
            rejected.push(format!("{}: {err}", manifest.object));
            continue;
        }
        set_phase(progress, "downloading", 0, manifest.bytes);
        tokio::fs::create_dir_all(work_dir)
            .await
            .map_err(|err| Error::io(work_dir.display(), err))?;
        let started = Instant::now();
        let packed = WorkFile::new(temp_path_with(work_dir, "download", "db.zst"));
        if !store.get_file(&manifest.object, packed.path()).await? {
            rejected.push(format!("{}: object missing", manifest.object));
            continue;
        }
        let downloaded = std::fs::metadata(packed.path()).map_or(0, |m| m.len());
        log_step("download", started, downloaded);
        set_phase(progress, "verifying", downloaded, manifest.bytes);
        let started = Instant::now();
        let path = packed.path().to_path_buf();
        let hashed = tokio::task::spawn_blocking(move || file_sha256(&path))
            .await
            .map_err(|err| Error::Internal(err.to_string()))?
            .map_err(|err| Error::io(packed.path().display(), err))?;
        if hashed != (manifest.bytes, manifest.sha256.clone()) {
            warn!(object = %manifest.object, "snapshot rejected: checksum mismatch; trying an older one");
            rejected.push(format!("{}: checksum mismatch", manifest.object));
            continue;
        }
        log_step("verify", started, downloaded);
        let started = Instant::now();
        let staged = WorkFile::new(temp_path(work_dir, "restore"));
        let (from, to, limit) = (
            packed.path().to_path_buf(),
            staged.path().to_path_buf(),
            manifest.raw_bytes,
        );
        let unpacked = tokio::task::spawn_blocking(move || decompress_file(&from, &to, limit))
            .await
            .map_err(|err| Error::Internal(err.to_string()))?;
        drop(packed);
        match unpacked {
            Ok(size) if size == manifest.raw_bytes => {
                log_step("stage", started, size);
                set_phase(progress, "verifying", manifest.bytes, manifest.bytes);
                return Ok(Some((manifest, staged)));
            }
            Ok(size) => rejected.push(format!(
                "{}: decompressed to {size} bytes, the manifest says {}",
                manifest.object, manifest.raw_bytes
            )),
            Err(err) => rejected.push(format!("{}: cannot decompress: {err}", manifest.object)),
        }
    }
    Err(Error::Snapshot(format!(
        "no valid snapshot in {}: {}",
        store.describe(),
        rejected.join("; ")
    )))
}

/// Why this node needs a snapshot, judged from the database file alone.
pub fn local_need(db: &Path) -> Option<String> {
    let size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        return Some("the database file is missing or empty".into());
    }
    let conn = match Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(conn) => conn,
        Err(err) => return Some(format!("the database cannot be opened: {err}")),
    };
    let _ = crate::connection::set_busy_timeout(&conn, Duration::from_secs(10));
    match conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)) {
        Ok(result) if result == "ok" => {}
        Ok(result) => return Some(format!("the database failed its integrity check: {result}")),
        Err(err) => return Some(format!("the database failed its integrity check: {err}")),
    }
    let tables: rusqlite::Result<i64> = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         AND name NOT LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\'",
        [],
        |r| r.get(0),
    );
    match tables {
        Ok(0) => Some("the database has no replicated tables yet".into()),
        Ok(_) => None,
        Err(err) => Some(format!("the database cannot be read: {err}")),
    }
}

/// The node id and applied positions stored in an existing database (read-only; absent values are empty).
pub fn peek_identity(db: &Path) -> (Option<u64>, BTreeMap<u32, u64>) {
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return (None, BTreeMap::new());
    };
    (
        meta::node_id(&conn).ok().flatten(),
        read_positions(&conn).unwrap_or_default(),
    )
}

/// Blocking: installs a snapshot into `db`, carrying over this node's unpublished changes.
///
/// The local changes are stamped (in the old file) and applied to the snapshot under the LWW rule, and their
/// messages are queued in the snapshot's outbox, so they are published after the restore. The file is then
/// replaced through SQLite's backup API in one step: other connections see the old or the new database, never
/// a half-written one.
///
/// `staged` is the downloaded, verified database file (from [`fetch_newest_valid`]); it is modified (the
/// merge) and deleted when this returns.
pub fn install(
    db: &Path,
    staged: &Path,
    node_id: u64,
    config: &Config,
    corrupt: bool,
) -> Result<()> {
    let raw_bytes = std::fs::metadata(staged)
        .map_err(|err| Error::io(staged.display(), err))?
        .len();
    let result = (|| {
        let started = Instant::now();
        let mut fresh = Connection::open(staged).ctx("opening the downloaded snapshot")?;
        let check: String = fresh
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .ctx("checking the downloaded snapshot")?;
        if check != "ok" {
            return Err(Error::Snapshot(format!(
                "the downloaded snapshot fails its integrity check: {check}"
            )));
        }
        log_step("integrity_check", started, raw_bytes);
        let started = Instant::now();
        capture::create_library_tables(&fresh)?;
        let carried = if corrupt {
            None
        } else {
            unpublished_changes(db, config, node_id)?
        };
        let schema = Schema::read(&fresh, config)?;
        let tx = fresh
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("merging local changes into the snapshot")?;
        let mark = capture::change_log_mark(&tx)?;
        let mut clock_high = meta::clock(&tx)?.last();
        if let Some((payloads, old_clock)) = &carried {
            clock_high = clock_high.max(*old_clock);
            for queued in payloads {
                if let Ok(batch) = decode(&queued.payload) {
                    apply_batch_any_origin(&tx, &schema, node_id, &batch)?;
                }
                let (shard, rows) = (queued.shard, queued.rows);
                outbox::insert(&tx, shard, rows, queued.newest, &queued.payload)?;
            }
            info!(
                messages = payloads.len(),
                "unpublished local changes carried into the restored database"
            );
        }
        meta::save_clock(&tx, &Clock::resume(clock_high))?;
        meta::set_node_id(&tx, node_id)?;
        // The copy publishes as a database of its own: messages in the stream under the snapshot maker's
        // instance (or this node's, from before the restore) are applied, not skipped as its own.
        meta::forget_instance(&tx)?;
        capture::discard_own_changes(&tx, mark)?;
        tx.commit().ctx("merging local changes into the snapshot")?;
        log_step("merge", started, 0);

        if corrupt {
            let aside = db.with_extension(format!("corrupt-{}", wall_millis()));
            warn!(db = %db.display(), moved_to = %aside.display(), "corrupted database moved aside");
            std::fs::rename(db, &aside).map_err(|err| Error::io(db.display(), err))?;
            remove_db_files(db);
        }
        let mut target = Connection::open(db).ctx("opening the database to replace")?;
        crate::connection::set_busy_timeout(&target, Duration::from_secs(30))
            .ctx("busy timeout")?;
        let backup = rusqlite::backup::Backup::new(&fresh, &mut target)
            .ctx("starting the database replacement")?;
        // One step copies every page under one lock: readers see all of the old or all of the new file.
        let started = Instant::now();
        loop {
            match backup.step(-1) {
                Ok(rusqlite::backup::StepResult::Done) => {
                    log_step("replace", started, raw_bytes);
                    break;
                }
                Ok(_) if started.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(other) => {
                    return Err(Error::Snapshot(format!(
                        "replacing {} did not finish ({other:?}); is another process holding it?",
                        db.display()
                    )))
                }
                Err(err) => {
                    return Err(Error::Snapshot(format!(
                        "replacing {}: {err}",
                        db.display()
                    )));
                }
            }
        }
        Ok(())
    })();
    remove_db_files(staged);
    result
}

/// Stamps the old database's pending changes and returns its outbox (shard, rows, payload) and clock.
#[allow(clippy::type_complexity)]
fn unpublished_changes(
    db: &Path,
    config: &Config,
    node_id: u64,
) -> Result<Option<(Vec<outbox::Queued>, u64)>> {
    if local_need(db).is_some_and(|reason| !reason.contains("no replicated tables")) {
        return Ok(None);
    }
    let mut conn = crate::connection::open_connection(db, Duration::from_secs(30))?;
    capture::create_library_tables(&conn)?;
    let schema = Schema::read(&conn, config)?;
    let mut clock = meta::clock(&conn)?;
    let history = crate::clock::ClockHistory::new(clock.last());
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("stamping local changes before a restore")?;
    let settings = StampSettings {
        max_changes: u32::MAX,
        ..StampSettings::from_config(config, node_id, meta::instance(&tx)?)
    };
    stamp_pending(&tx, &schema, &mut clock, &history, &settings)?;
    let payloads = outbox::load(&tx)?;
    tx.commit().ctx("stamping local changes before a restore")?;
    Ok(Some((payloads, clock.last())))
}
