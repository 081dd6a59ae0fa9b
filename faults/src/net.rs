//! Where the processes run. With network namespaces (root, `ip netns`), node k lives in its own namespace
//! at 10.77.0.k on a bridge in a hub namespace: fixed ports that cannot collide with anything on the host,
//! and a partition is node k's link going down. Without them, everything runs on 127.0.0.1 with free ports
//! and the partition scenario is skipped.

use std::process::{Command, Stdio};

pub enum Net {
    Local,
    Namespaces { prefix: String, nodes: usize },
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Net {
    /// Namespaces `<prefix>-hub`, `<prefix>-1..n`; `Err` says why they cannot be used here.
    pub fn namespaces(prefix: &str, nodes: usize) -> Result<Net, String> {
        let net = Net::Namespaces {
            prefix: prefix.to_string(),
            nodes,
        };
        let hub = format!("{prefix}-hub");
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &hub])?;
            ip(&["-n", &hub, "link", "set", "lo", "up"])?;
            ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", "br0", "up"])?;
            for k in 1..=nodes {
                let ns = format!("{prefix}-{k}");
                let (hub_end, node_end) = (format!("{prefix}v{k}"), format!("{prefix}e{k}"));
                ip(&["netns", "add", &ns])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                ip(&[
                    "link", "add", &hub_end, "type", "veth", "peer", "name", &node_end,
                ])?;
                ip(&["link", "set", &hub_end, "netns", &hub])?;
                ip(&["link", "set", &node_end, "netns", &ns])?;
                ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0"])?;
                ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("10.77.0.{k}/24"),
                    "dev",
                    &node_end,
                ])?;
                ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
            }
            Ok(())
        };
        match setup() {
            Ok(()) => Ok(net),
            Err(err) => {
                drop(net); // removes what was created
                Err(err)
            }
        }
    }

    pub fn is_isolated(&self) -> bool {
        matches!(self, Net::Namespaces { .. })
    }

    /// The address node `k` (1-based) listens on.
    pub fn host(&self, k: usize) -> String {
        match self {
            Net::Local => "127.0.0.1".into(),
            Net::Namespaces { .. } => format!("10.77.0.{k}"),
        }
    }

    /// A command that runs `program` where node `k` lives.
    pub fn command(&self, k: usize, program: &std::path::Path) -> Command {
        match self {
            Net::Local => Command::new(program),
            Net::Namespaces { prefix, .. } => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &format!("{prefix}-{k}")])
                    .arg(program);
                command
            }
        }
    }

    /// What [`Net::command`] puts before the program, as a prefix for launchers that build their own.
    pub fn prefix(&self, k: usize) -> Vec<std::ffi::OsString> {
        match self {
            Net::Local => Vec::new(),
            Net::Namespaces { prefix, .. } => ["ip", "netns", "exec", &format!("{prefix}-{k}")]
                .into_iter()
                .map(Into::into)
                .collect(),
        }
    }

    /// Cuts node `k` off from every other node (2/1 split for k = 3 of 3).
    pub fn partition(&self, k: usize) -> Result<(), String> {
        self.link(k, "down")
    }

    pub fn heal(&self, k: usize) -> Result<(), String> {
        self.link(k, "up")
    }

    fn link(&self, k: usize, state: &str) -> Result<(), String> {
        match self {
            Net::Local => Err("partitions need network namespaces".into()),
            Net::Namespaces { prefix, .. } => ip(&[
                "-n",
                &format!("{prefix}-hub"),
                "link",
                "set",
                &format!("{prefix}v{k}"),
                state,
            ]),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Net::Namespaces { prefix, nodes } = self {
            // Deleting a namespace removes its ends of the veth pairs (and so the pairs).
            for k in 1..=*nodes {
                let _ = ip(&["netns", "del", &format!("{prefix}-{k}")]);
                // Left in this namespace only if setting up failed halfway.
                let _ = ip(&["link", "del", &format!("{prefix}v{k}")]);
            }
            let _ = ip(&["netns", "del", &format!("{prefix}-hub")]);
        }
    }
}
