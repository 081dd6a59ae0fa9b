//! `uniffi-bindgen-swift LIBRARY OUT_DIR --swift-sources --headers ...`: uniffi's own Swift generator, built
//! from the workspace so the generated code always matches the uniffi version the library was built with.

fn main() {
    uniffi::uniffi_bindgen_swift();
}
