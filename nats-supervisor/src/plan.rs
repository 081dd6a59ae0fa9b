//! What the generated nats-server configuration is made of: the parsed `nats.*` options (listen
//! addresses, routes, `dns://` peers, leaf remotes) and the text written from them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::files::Files;
use crate::supervisor::EmbeddedOptions;
use crate::user_config::top_level_keys;

/// Largest `max_payload` nats-server accepts (its `max_pending` default is 64 MiB).
const MAX_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;
const DNS_DEFAULT_INTERVAL_MS: u64 = 5_000;
const DNS_MIN_INTERVAL_MS: u64 = 100;
/// nats-server's keys for the (plain) monitoring listener: `http` sets host and port, the others the
/// port only (the host is then the client listen host).
const MONITOR_KEYS: [&str; 3] = ["http", "http_port", "monitor_port"];
const HTTPS_KEYS: [&str; 2] = ["https", "https_port"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Listen {
    pub(crate) fn parse(value: &str, field: &str) -> Result<Listen> {
        let value = value.trim();
        let value = value.strip_prefix("nats://").unwrap_or(value);
        let bad = |why: &str| Error::config(field, format!("`{value}`: {why}"));
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
            match after {
                "" => (host.to_string(), None),
                _ => (
                    host.to_string(),
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected `:port` after `]`"))?,
                    ),
                ),
            }
        } else if value.matches(':').count() > 1 {
            return Err(bad("write an IPv6 address as `[addr]:port`"));
        } else {
            match value.split_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (value.to_string(), None),
            }
        };
        let port = match port {
            None | Some("") => 0,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("the port must be a number 0..=65535"))?,
        };
        if host
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '/')
        {
            return Err(bad("invalid host"));
        }
        let host = if host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            host
        };
        Ok(Listen { host, port })
    }

    pub(crate) fn host_for_config(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `host:port` for a listen directive; `None` = let nats-server pick (`-1`).
    pub(crate) fn render(&self, port: Option<u16>) -> String {
        match port {
            Some(p) => format!("{}:{p}", self.host_for_config()),
            None => format!("{}:-1", self.host_for_config()),
        }
    }

    /// Host to dial from this machine (unspecified listen addresses map to loopback).
    pub(crate) fn dial_host(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
            Ok(IpAddr::V6(ip)) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LeafRemote {
    pub(crate) url: String,
    pub(crate) hub: bool,
}

pub(crate) fn parse_leaf(spec: &str) -> Result<LeafRemote> {
    const FIELD: &str = "nats.leaf_servers";
    let spec = spec.trim();
    let (url, query) = spec.split_once('?').unwrap_or((spec, ""));
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !["nats-leaf", "nats", "tls", "ws", "wss"].contains(&scheme) {
        return Err(Error::config(
            FIELD,
            format!("`{spec}`: expected a nats-leaf://, nats://, tls://, ws:// or wss:// URL"),
        ));
    }
    if url.contains('"') || url.chars().any(char::is_whitespace) {
        return Err(Error::config(FIELD, format!("`{spec}`: invalid URL")));
    }
    let mut hub = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("hub", "true" | "1" | "") => hub = true,
            ("hub", "false" | "0") => hub = false,
            _ => {
                return Err(Error::config(
                    FIELD,
                    format!("`{spec}`: unknown option `{pair}` (only `hub=true` is supported)"),
                ))
            }
        }
    }
    Ok(LeafRemote {
        url: url.to_string(),
        hub,
    })
}

#[derive(Debug, Clone)]
pub(crate) struct DnsPeer {
    pub(crate) spec: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) min: usize,
    pub(crate) interval: Duration,
    /// Opened the first time `min` addresses resolved; never closes again.
    pub(crate) gate_open: bool,
    /// Addresses of the last answer that was applied, excluding this server itself.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Number of addresses (self included) in the last successful answer.
    pub(crate) last_total: usize,
}

pub(crate) enum Peer {
    Route(String),
    Dns(DnsPeer),
}

pub(crate) fn parse_peer(spec: &str) -> Result<Peer> {
    const FIELD: &str = "nats.cluster_peers";
    let spec = spec.trim();
    let bad = |why: &str| Error::config(FIELD, format!("`{spec}`: {why}"));
    let Some((scheme, rest)) = spec.split_once("://") else {
        return Err(bad(
            "expected nats://host:port or dns://host:port?min=N&interval_ms=M",
        ));
    };
    match scheme {
        "nats" | "nats-route" | "tls" => {
            if spec.contains('"') || spec.chars().any(char::is_whitespace) {
                return Err(bad("invalid URL"));
            }
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            let listen = Listen::parse(authority, FIELD)?;
            if listen.port == 0 {
                return Err(bad("a route needs an explicit port"));
            }
            Ok(Peer::Route(spec.to_string()))
        }
        "dns" => {
            let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
            let authority = authority.trim_end_matches('/');
            let listen = Listen::parse(authority, FIELD)?;
            if listen.port == 0 {
                return Err(bad("a dns:// peer needs the route port of the peers"));
            }
            let mut min = 1usize;
            let mut interval_ms = DNS_DEFAULT_INTERVAL_MS;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("min", v)) => {
                        min = v
                            .parse()
                            .ok()
                            .filter(|m| *m >= 1)
                            .ok_or_else(|| bad("`min` must be a number >= 1"))?
                    }
                    Some(("interval_ms", v)) => {
                        interval_ms = v
                            .parse()
                            .ok()
                            .filter(|ms| *ms >= DNS_MIN_INTERVAL_MS)
                            .ok_or_else(|| {
                                bad(&format!(
                                    "`interval_ms` must be a number >= {DNS_MIN_INTERVAL_MS}"
                                ))
                            })?
                    }
                    _ => {
                        return Err(bad(&format!(
                            "unknown option `{pair}` (supported: min, interval_ms)"
                        )))
                    }
                }
            }
            Ok(Peer::Dns(DnsPeer {
                spec: spec.to_string(),
                host: listen
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: listen.port,
                min,
                interval: Duration::from_millis(interval_ms),
                gate_open: false,
                addrs: Vec::new(),
                last_total: 0,
            }))
        }
        _ => Err(bad("unsupported scheme (use nats:// or dns://)")),
    }
}

pub(crate) fn check_name(value: &str, field: &str) -> Result<()> {
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
    {
        return Err(Error::config(
            field,
            format!("`{value}` must not contain spaces, quotes or backslashes"),
        ));
    }
    Ok(())
}

pub(crate) fn path_str<'a>(path: &'a Path, field: &str) -> Result<&'a str> {
    let text = path
        .to_str()
        .ok_or_else(|| Error::config(field, format!("{} is not valid UTF-8", path.display())))?;
    if text.chars().any(char::is_control) {
        return Err(Error::config(field, "the path contains control characters"));
    }
    Ok(text)
}

/// A path relative to `from_dir` (both absolute). nats-server joins `include` paths onto the
/// including file's folder, so an absolute path cannot be written there as is.
pub(crate) fn relative_path(from_dir: &Path, to: &Path) -> Option<String> {
    let from: Vec<Component<'_>> = from_dir.components().collect();
    let target: Vec<Component<'_>> = to.components().collect();
    if from.first() != target.first() {
        return None;
    }
    let common = from
        .iter()
        .zip(target.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    for component in &target[common..] {
        parts.push(component.as_os_str().to_str()?.to_string());
    }
    Some(parts.join("/"))
}

/// A nats-server configuration string literal.
pub(crate) fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Plan: everything the generated configuration is made from
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) server_name: String,
    pub(crate) cluster_name: String,
    pub(crate) client: Listen,
    /// The client port, once known (configured, or discovered after the first start).
    pub(crate) client_port: Option<u16>,
    pub(crate) cluster: Option<Listen>,
    pub(crate) static_routes: Vec<String>,
    pub(crate) dns: Vec<DnsPeer>,
    pub(crate) leafs: Vec<LeafRemote>,
    /// `include` lines, relative to the store folder (users' files, after the generated settings).
    pub(crate) includes: Vec<String>,
    /// An included file sets the monitoring listener: the generated `http` line is left out.
    pub(crate) user_monitor: bool,
    pub(crate) max_payload: u32,
}

impl Plan {
    pub(crate) fn from_options(opts: &EmbeddedOptions) -> Result<Plan> {
        check_name(&opts.server_name, "nats.server_name")?;
        let cluster_name = match opts.cluster_name.trim() {
            "" => "harmonylite".to_string(),
            name => name.to_string(),
        };
        check_name(&cluster_name, "nats.cluster_name")?;
        if opts.max_payload == 0 || opts.max_payload > MAX_MAX_PAYLOAD {
            return Err(Error::config(
                "max_payload",
                format!("{} is out of range 1..={MAX_MAX_PAYLOAD}", opts.max_payload),
            ));
        }
        let client = Listen::parse(&opts.bind_address, "nats.bind_address")?;
        let cluster = match opts.cluster_addr.trim() {
            "" => None,
            addr => {
                let listen = Listen::parse(addr, "nats.cluster_addr")?;
                if listen.port == 0 {
                    return Err(Error::config(
                        "nats.cluster_addr",
                        "needs an explicit port: the peers route to it",
                    ));
                }
                Some(listen)
            }
        };
        let mut static_routes = Vec::new();
        let mut dns = Vec::new();
        for spec in opts.cluster_peers.iter().filter(|s| !s.trim().is_empty()) {
            match parse_peer(spec)? {
                Peer::Route(url) => static_routes.push(url),
                Peer::Dns(peer) => dns.push(peer),
            }
        }
        if cluster.is_none() && (!static_routes.is_empty() || !dns.is_empty()) {
            return Err(Error::config(
                "nats.cluster_peers",
                "cluster peers need nats.cluster_addr (the route listen address)",
            ));
        }
        let leafs = opts
            .leaf_servers
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_leaf(s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            server_name: opts.server_name.trim().to_string(),
            cluster_name,
            client_port: (client.port != 0).then_some(client.port),
            client,
            cluster,
            static_routes,
            dns,
            leafs,
            includes: Vec::new(),
            user_monitor: false,
            max_payload: opts.max_payload,
        })
    }

    /// Adds `include <user>` at the end of the generated config. The path is written relative to the
    /// store folder, because nats-server joins every `include` path onto the including file's folder.
    pub(crate) fn include_user_config(&mut self, files: &Files, user: &Path) -> Result<()> {
        const FIELD: &str = "nats.server_config";
        let absolute = std::fs::canonicalize(user)
            .map_err(|e| Error::config(FIELD, format!("{}: {e}", user.display())))?;
        let relative = relative_path(&files.dir, &absolute).ok_or_else(|| {
            Error::config(
                FIELD,
                format!("{} cannot be reached from the store folder", user.display()),
            )
        })?;
        path_str(Path::new(&relative), FIELD)?;
        let text = std::fs::read_to_string(&absolute)
            .map_err(|e| Error::config(FIELD, format!("{}: {e}", user.display())))?;
        let keys = top_level_keys(&text, absolute.parent().unwrap_or(Path::new("/")));
        if let Some(key) = HTTPS_KEYS.iter().find(|k| keys.contains(**k)) {
            return Err(Error::config(
                FIELD,
                format!(
                    "{} sets `{key}`: the monitoring endpoint must be plain http, since readiness \
                     is checked over it; use `http: host:port` or `monitor_port` instead",
                    user.display()
                ),
            ));
        }
        self.user_monitor |= MONITOR_KEYS.iter().any(|k| keys.contains(*k));
        self.includes.push(relative);
        Ok(())
    }

    /// Routes to write: static peers, plus the addresses of every dns:// peer whose gate is open.
    pub(crate) fn routes(&self) -> Vec<String> {
        let mut routes = self.static_routes.clone();
        for peer in self.dns.iter().filter(|p| p.gate_open) {
            for addr in &peer.addrs {
                let url = format!("nats://{addr}");
                if !routes.contains(&url) {
                    routes.push(url);
                }
            }
        }
        routes
    }

    pub(crate) fn cluster_size_hint(&self) -> usize {
        1 + self.static_routes.len()
            + self
                .dns
                .iter()
                .map(|p| p.addrs.len().max(p.min.saturating_sub(1)))
                .sum::<usize>()
    }

    /// Applies one DNS answer to dns peer `idx`; true when the route set changed.
    pub(crate) fn apply_dns(&mut self, idx: usize, answer: &[SocketAddr]) -> bool {
        let cluster = self.cluster.clone();
        let Some(peer) = self.dns.get_mut(idx) else {
            return false;
        };
        let mut all: Vec<SocketAddr> = answer.to_vec();
        all.sort();
        all.dedup();
        let mut others: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| !cluster.as_ref().is_some_and(|c| is_self(*a, c)))
            .collect();
        others.sort();
        peer.last_total = all.len();
        if !peer.gate_open {
            if all.len() < peer.min {
                return false;
            }
            peer.gate_open = true;
            peer.addrs = others;
            return true;
        }
        if all.is_empty() || peer.addrs == others {
            return false;
        }
        peer.addrs = others;
        true
    }

    pub(crate) fn render(&self, files: &Files) -> Result<(String, Vec<String>)> {
        let dir = path_str(&files.dir, "nats.store_dir")?;
        let mut c = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(
            c,
            "# Generated by HarmonyLite on every start; do not edit. Put your own settings into\n\
             # the file named by nats.server_config (included at the end)."
        );
        if !self.server_name.is_empty() {
            let _ = writeln!(c, "server_name: {}", q(&self.server_name));
        }
        let _ = writeln!(c, "listen: {}", q(&self.client.render(self.client_port)));
        // nats-server applies `http` and `http_port`/`monitor_port` in random order (they are
        // different keys of one map), so a user's monitor setting only wins when ours is absent.
        if !self.user_monitor {
            let _ = writeln!(c, "http: \"127.0.0.1:-1\"");
        }
        let _ = writeln!(c, "max_payload: {}", self.max_payload);
        let _ = writeln!(c, "ports_file_dir: {}", q(dir));
        let _ = writeln!(
            c,
            "pid_file: {}",
            q(path_str(&files.pid, "nats.store_dir")?)
        );
        let _ = writeln!(
            c,
            "log_file: {}",
            q(path_str(&files.log, "nats.store_dir")?)
        );
        let _ = writeln!(c, "logfile_size_limit: 10485760");
        let _ = writeln!(c, "logfile_max_num: 5");
        let _ = writeln!(c, "jetstream {{\n  store_dir: {}\n}}", q(dir));
        let mut routes = Vec::new();
        if let Some(cluster) = &self.cluster {
            routes = self.routes();
            let _ = writeln!(c, "cluster {{");
            let _ = writeln!(c, "  name: {}", q(&self.cluster_name));
            let _ = writeln!(c, "  listen: {}", q(&cluster.render(Some(cluster.port))));
            let _ = writeln!(c, "  routes: [");
            if routes.is_empty() {
                // Clustered JetStream refuses to start without a configured route. A route to
                // ourselves satisfies it; nats-server drops it as a duplicate, and waits.
                let _ = writeln!(
                    c,
                    "    {}  # self: no peer known yet",
                    q(&format!("nats://{}:{}", cluster.dial_host(), cluster.port))
                );
            }
            for route in &routes {
                let _ = writeln!(c, "    {}", q(route));
            }
            let _ = writeln!(c, "  ]\n}}");
        }
        if !self.leafs.is_empty() {
            let _ = writeln!(c, "leafnodes {{\n  remotes: [");
            for leaf in &self.leafs {
                let hub = if leaf.hub { ", hub: true" } else { "" };
                let _ = writeln!(c, "    {{ urls: [{}]{hub} }}", q(&leaf.url));
            }
            let _ = writeln!(c, "  ]\n}}");
        }
        for include in &self.includes {
            let _ = writeln!(c, "include {}", q(include));
        }
        Ok((c, routes))
    }
}

/// Whether `addr` is this server's own route listener.
pub(crate) fn is_self(addr: SocketAddr, cluster: &Listen) -> bool {
    if addr.port() != cluster.port {
        return false;
    }
    match cluster.host.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => ip == addr.ip(),
        _ => is_local_ip(addr.ip()),
    }
}

/// An address is local when a socket can be bound to it.
pub(crate) fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        let l = Listen::parse("", "f").expect("empty");
        assert_eq!((l.host.as_str(), l.port), ("127.0.0.1", 0));
        let l = Listen::parse("0.0.0.0:4222", "f").expect("v4");
        assert_eq!(l.dial_host(), "127.0.0.1");
        let l = Listen::parse("[::1]:5000", "f").expect("v6");
        assert_eq!(
            (l.render(Some(5000)).as_str(), l.dial_host().as_str()),
            ("[::1]:5000", "[::1]")
        );
        assert!(Listen::parse("::1:5000", "f").is_err());
        assert!(Listen::parse("host:99999", "f").is_err());
    }

    #[test]
    fn parses_peers_and_leafs() {
        assert!(matches!(
            parse_peer("nats://10.0.0.1:6222"),
            Ok(Peer::Route(_))
        ));
        assert!(parse_peer("nats://10.0.0.1").is_err());
        assert!(parse_peer("http://x:1").is_err());
        match parse_peer("dns://nats.svc:6222?min=3&interval_ms=250") {
            Ok(Peer::Dns(p)) => {
                assert_eq!((p.host.as_str(), p.port, p.min), ("nats.svc", 6222, 3));
                assert_eq!(p.interval, Duration::from_millis(250));
            }
            _ => panic!("dns peer not parsed"),
        }
        assert!(parse_peer("dns://h:1?min=0").is_err());
        assert!(parse_peer("dns://h:1?bogus=1").is_err());
        let leaf = parse_leaf("nats-leaf://hub:7422?hub=true").expect("leaf");
        assert!(leaf.hub && leaf.url == "nats-leaf://hub:7422");
        assert!(parse_leaf("nats-leaf://hub:7422?x=1").is_err());
    }

    #[test]
    fn relative_include_paths() {
        let rel = relative_path(Path::new("/a/b/c"), Path::new("/a/x/y.conf"));
        assert_eq!(rel.as_deref(), Some("../../x/y.conf"));
        let rel = relative_path(Path::new("/a"), Path::new("/a/y.conf"));
        assert_eq!(rel.as_deref(), Some("y.conf"));
    }

    #[test]
    fn dns_gate_opens_at_min_and_excludes_self() {
        let opts = EmbeddedOptions {
            cluster_addr: "127.0.0.1:6222".into(),
            cluster_peers: vec!["dns://peers.hl-fake:6222?min=3".into()],
            ..EmbeddedOptions::default()
        };
        let mut plan = Plan::from_options(&opts).expect("plan");
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(!plan.apply_dns(0, &[a("127.0.0.1:6222"), a("10.9.9.1:6222")]));
        assert!(plan.routes().is_empty());
        assert_eq!(plan.cluster_size_hint(), 3);
        let three = [a("127.0.0.1:6222"), a("10.9.9.1:6222"), a("10.9.9.2:6222")];
        assert!(plan.apply_dns(0, &three));
        assert_eq!(
            plan.routes(),
            vec!["nats://10.9.9.1:6222", "nats://10.9.9.2:6222"]
        );
        // Once open, an empty answer keeps the routes; a smaller one replaces them.
        assert!(!plan.apply_dns(0, &[]));
        assert!(plan.apply_dns(0, &[a("10.9.9.2:6222")]));
        assert_eq!(plan.routes(), vec!["nats://10.9.9.2:6222"]);
    }

    #[test]
    fn a_user_monitor_setting_replaces_the_generated_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).expect("mkdir");
        let files = Files::new(store.canonicalize().expect("canonical"));
        let render = |user: Option<&str>| {
            let mut plan = Plan::from_options(&EmbeddedOptions::default()).expect("plan");
            if let Some(text) = user {
                let path = dir.path().join("user.conf");
                std::fs::write(&path, text).expect("write");
                plan.include_user_config(&files, &path)?;
            }
            plan.render(&files).map(|(text, _)| text)
        };
        let generated = render(None).expect("render");
        assert!(
            generated.contains("http: \"127.0.0.1:-1\"\n"),
            "{generated}"
        );
        for user in [
            "monitor_port: 8222",
            "HTTP_PORT = 8222",
            "http: 0.0.0.0:8222",
        ] {
            let text = render(Some(user)).expect("render");
            assert!(!text.contains("http:"), "{user}: {text}");
            assert!(text.ends_with("include \"../user.conf\"\n"), "{text}");
        }
        // Other keys, and a port set inside a block, leave the generated listener alone.
        let text = render(Some("max_connections: 5\nwebsocket { port: 1 }\n")).expect("render");
        assert!(text.contains("http: \"127.0.0.1:-1\""), "{text}");
        match render(Some("https: 127.0.0.1:8443")) {
            Err(Error::Config { field, reason }) => {
                assert_eq!(field, "nats.server_config");
                assert!(reason.contains("`https`"), "{reason}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
