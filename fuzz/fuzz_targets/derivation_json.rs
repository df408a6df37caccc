//! Derivation JSON, version 4 and Nix 2.8's shape: parses or fails.
#![no_main]

use larder_store_core::{Derivation, StoreDir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = StoreDir::default();
    let _ = Derivation::from_json(text, &dir);
    let _ = Derivation::from_json_v4(text);
    let _ = Derivation::from_json_legacy(text, &dir);
});
