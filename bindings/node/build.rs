fn main() {
    napi_build::setup();
    // Linux: the shim that gives the addon's SQLite open-file-description locks (src/sqlite_locks.c).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rerun-if-changed=src/sqlite_locks.c");
        let mut build = cc::Build::new();
        if let Ok(include) = std::env::var("DEP_SQLITE3_INCLUDE") {
            build.include(include);
        }
        build
            .file("src/sqlite_locks.c")
            .warnings(true)
            .compile("harmonylite_sqlite_locks");
    }
}
