//! Hashing a large file keeps memory bounded. This test has its own binary
//! (so its own process) because it reads the process's peak resident size.

#![cfg(test)]

use std::fs::{self, File};

use larder_store_core::HashAlgo;
use larder_store_core::nar::{self, Dumper};

/// The peak resident set size of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn hashing_a_1_gib_sparse_file_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let size: u64 = 1 << 30;
    File::create(&path).unwrap().set_len(size).unwrap();

    // Resetting the peak (writing 5 to clear_refs) makes the measurement
    // about this hash alone; where that is not allowed, the peak since
    // start still bounds it.
    let _ = fs::write("/proc/self/clear_refs", "5");
    let Some(before) = peak_rss_kib() else {
        eprintln!("skipping the memory check: /proc/self/status has no VmHWM");
        return;
    };
    let mut dumper = Dumper::new();
    let hashed = dumper.hash_path(&path, HashAlgo::Sha256).unwrap();
    let after = peak_rss_kib().unwrap();

    assert_eq!(hashed.size, nar::write::dump_bytes_len(size));
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 16,
        "peak RSS grew by {grown_mib} MiB while hashing 1 GiB"
    );
}
