//! NAR: validating and restoring agree, and what restores dumps back to
//! the same bytes.
#![no_main]

use std::io::Cursor;

use larder_store_core::nar;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let checked = nar::validate(&mut Cursor::new(data));
    let dir = tempfile::tempdir().expect("temp folder");
    let dest = dir.path().join("dest");
    let restored = nar::restore(&mut Cursor::new(data), &dest);
    assert_eq!(checked.is_ok(), restored.is_ok());
    if let Ok(size) = restored {
        let mut again = Vec::new();
        nar::dump_path(&dest, &mut again).expect("dump what was restored");
        assert!(again == data[..usize::try_from(size).expect("small")]);
    }
});
