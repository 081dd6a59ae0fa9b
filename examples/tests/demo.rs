//! The README's demo runs as written and its output shows convergence.

use std::process::Command;

#[test]
fn demo_converges_three_nodes_on_the_embedded_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--rows", "50"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("converged: 3 nodes hold the same 150 rows"))
        .unwrap_or_else(|| panic!("no convergence line in:\n{stdout}"));
    // The last per-node block printed before it has three identical checksums.
    let checksum = line
        .split("checksum ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("checksum");
    let last_block: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("node ") && l.contains("rows"))
        .collect();
    let finals = &last_block[last_block.len() - 3..];
    for row in finals {
        assert!(row.contains("150 rows") && row.ends_with(checksum), "{row}");
    }
}
