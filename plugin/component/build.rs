//! Links the component with a 256 KiB shadow stack instead of Rust's default of 1 MiB.
//!
//! Every instance holds its stack in its linear memory, so the default cost each integration
//! 1 MiB: more than the rest of a 1,000-user instance. The shadow stack holds only what wasm
//! locals cannot (address-taken and large values): the whole end-to-end suite, including JSON
//! nested to serde_json's limit on the webhook (`tests/e2e/bad_input.rs`), passed with 32 KiB;
//! 256 KiB leaves eight times that.

fn main() {
    println!("cargo:rustc-link-arg=-zstack-size=262144");
}
