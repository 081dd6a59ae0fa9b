//! Builds the SQLite lock shim (`src/sqlite_locks/ofd_locks.c`, ADR 0012) on Linux when libsqlite3-sys
//! bundles SQLite (it then exports its headers as `DEP_SQLITE3_INCLUDE`). Against a system SQLite
//! (`LIBSQLITE3_SYS_USE_PKG_CONFIG`) the library is the host app's own, shared rather than a second copy,
//! and no shim is built.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(harmonylite_ofd_locks)");
    println!("cargo:rerun-if-changed=src/sqlite_locks/ofd_locks.c");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let Ok(include) = std::env::var("DEP_SQLITE3_INCLUDE") else {
        return;
    };
    if !linux {
        return;
    }
    cc::Build::new()
        .include(include)
        .file("src/sqlite_locks/ofd_locks.c")
        .warnings(true)
        .extra_warnings(true)
        .compile("harmonylite_sqlite_locks");
    println!("cargo:rustc-cfg=harmonylite_ofd_locks");
}
