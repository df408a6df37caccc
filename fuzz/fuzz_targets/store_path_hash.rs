//! Store paths, hashes, content addresses and nix32: parse or fail, and
//! what parses prints back the same.
#![no_main]

use larder_store_core::{ContentAddress, Hash, StoreDir, StorePath, nixbase32};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = StorePath::from_base_name(s) {
        assert_eq!(path.as_str(), s);
    }
    let dir = StoreDir::default();
    if let Ok(path) = dir.parse(s) {
        assert_eq!(dir.display(&path), s);
    }
    let _ = dir.parse_inside(s);
    if let Ok(hash) = Hash::parse_prefixed(s) {
        assert_eq!(Hash::parse_prefixed(&hash.to_sri()), Ok(hash));
    }
    if let Ok(ca) = ContentAddress::parse(s) {
        assert_eq!(ContentAddress::parse(&ca.render()), Ok(ca));
    }
    for len in [16, 20, 32, 64] {
        if let Ok(bytes) = nixbase32::decode(s, len) {
            assert_eq!(nixbase32::encode(&bytes), s);
        }
    }
});
