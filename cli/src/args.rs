//! Command-line flags in HarmonyLite's spelling (`-config`, `-node-id`, ...). `--flag` works too, and so does
//! `-flag=value`. Anything unknown or malformed is an error naming the flag (the caller exits with code 2).

use std::path::PathBuf;

pub const USAGE: &str = "\
harmonylite — replicate a SQLite database file leaderlessly over NATS JetStream (sidecar mode)

USAGE:
    harmonylite -config config.toml [flags]

FLAGS:
    -config <path>          TOML configuration (HarmonyLite's keys); required unless -db is given
    -db <path>              database file to replicate (overrides db_path)
    -node-id <u64>          node id (overrides node_id)
    -cleanup                remove every trigger and table HarmonyLite created, then exit
    -save-snapshot          publish pending changes, save a snapshot now, then exit
    -cluster-addr host:port route listen address of the embedded nats-server
    -cluster-peers url,...  routes: nats://host:port or dns://host:port?min=N&interval_ms=M
    -leaf-servers url,...   leaf-node remotes of the embedded nats-server
    -version                print version information and exit
    -help, --help           print this help and exit

Exit codes: 0 success, 1 runtime failure, 2 invalid flags or configuration.";

#[derive(Debug, Default, PartialEq)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub node_id: Option<u64>,
    pub cleanup: bool,
    pub save_snapshot: bool,
    pub cluster_addr: Option<String>,
    pub cluster_peers: Option<Vec<String>>,
    pub leaf_servers: Option<Vec<String>>,
    pub version: bool,
    pub help: bool,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub fn parse(raw: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    let mut iter = raw.into_iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!(
                "unexpected argument `{arg}` (flags start with -; see -help)"
            ));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (flag.to_string(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => iter
                    .next()
                    .ok_or_else(|| format!("flag -{name} needs {what}")),
            }
        };
        match name.as_str() {
            "config" => args.config = Some(PathBuf::from(value("a file path")?)),
            "db" => args.db = Some(PathBuf::from(value("a file path")?)),
            "node-id" => {
                let text = value("a number")?;
                args.node_id = Some(text.parse().map_err(|_| {
                    format!("flag -node-id: `{text}` is not an unsigned 64-bit number")
                })?);
            }
            "cleanup" => args.cleanup = true,
            "save-snapshot" => args.save_snapshot = true,
            "cluster-addr" => args.cluster_addr = Some(value("host:port")?),
            "cluster-peers" => {
                args.cluster_peers = Some(list(&value("a comma-separated list of URLs")?))
            }
            "leaf-servers" => {
                args.leaf_servers = Some(list(&value("a comma-separated list of URLs")?))
            }
            "version" => args.version = true,
            "help" | "h" => args.help = true,
            other => return Err(format!("unknown flag -{other} (see -help)")),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Args, String> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn harmonylite_spelling_and_double_dash_both_work() {
        let args =
            parse_str("-config c.toml --node-id 7 -cluster-peers=nats://a:1,nats://b:2 -cleanup")
                .expect("valid");
        assert_eq!(args.config, Some(PathBuf::from("c.toml")));
        assert_eq!(args.node_id, Some(7));
        assert_eq!(
            args.cluster_peers,
            Some(vec!["nats://a:1".to_string(), "nats://b:2".to_string()])
        );
        assert!(args.cleanup);
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(parse_str("-node-id abc")
            .expect_err("bad")
            .contains("-node-id"));
        assert!(parse_str("-bogus").expect_err("bad").contains("-bogus"));
        assert!(parse_str("-config").expect_err("bad").contains("-config"));
        assert!(parse_str("stray").expect_err("bad").contains("stray"));
    }
}
