//! `.drv` ATerm: parses or fails, and what parses prints back the same.
#![no_main]

use larder_store_core::{Derivation, StoreDir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = StoreDir::default();
    if let Ok(drv) = Derivation::parse_aterm(data, "x", &dir) {
        let printed = drv.to_aterm(&dir);
        let again = Derivation::parse_aterm(printed.as_bytes(), "x", &dir);
        assert!(again.is_ok_and(|again| again == drv));
    }
});
