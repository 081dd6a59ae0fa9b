//! `cfg(system_sqlite)` when libsqlite3-sys links the system library (LIBSQLITE3_SYS_USE_PKG_CONFIG, as the
//! package build sets it): only then is the `sqlite3_set_clientdata` stand-in compiled; next to the
//! bundled SQLite it would be a duplicate symbol.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(system_sqlite)");
    println!("cargo:rerun-if-env-changed=LIBSQLITE3_SYS_USE_PKG_CONFIG");
    let system = std::env::var_os("LIBSQLITE3_SYS_USE_PKG_CONFIG").is_some_and(|v| v != "0");
    if system {
        println!("cargo:rustc-cfg=system_sqlite");
    }
}
