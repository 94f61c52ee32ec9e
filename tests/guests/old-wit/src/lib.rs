//! A component of `teams-presence:plugin@2.1.0`, the major version before this host's: the host
//! must refuse it with a clear error.

#![allow(missing_docs)] // generated bindings
#![allow(unsafe_code)] // generated bindings

wit_bindgen::generate!({ path: "wit", world: "presence-sync" });

struct Old;

impl exports::teams_presence::plugin::sync::Guest for Old {
    fn configure(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn plugin_version() -> String {
        "0.0.1-old".into()
    }
}

export!(Old);
