//! Links the component with a 256 KiB shadow stack instead of Rust's default of 1 MiB.
//!
//! Every instance holds its stack in its linear memory, so the default cost each integration
//! 1 MiB: more than the rest of a 1,000-user instance. The shadow stack holds only what wasm
//! locals cannot (address-taken and large values). Measured by linking smaller stacks: the
//! whole end-to-end suite passed with 128 KiB, and the webhook's bad-input tests (JSON nested
//! to serde_json's limit in an item and in a token's claims, `tests/e2e/bad_input.rs`) and the
//! sync tests passed with 32 KiB; 256 KiB leaves eight times that.

fn main() {
    println!("cargo:rustc-link-arg=-zstack-size=262144");
}
