//! Reference scanning throughput, for `cargo xtask bench`.
//!
//! Writes a file shaped like build outputs (half binary, half text made of
//! words, paths and numbers) with store path hash parts sprinkled in, then scans it for 200 candidate hash parts, reading it in
//! 1 MiB chunks from the page cache. The peer is GNU `grep -F` looking for
//! the same 200 strings in the same file, in the same run. Prints one JSON
//! object per figure.
//!
//! Usage: `refscan_bench [MEGABYTES]` (default 256).

#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_store_core::nixbase32;
use larder_store_core::references::RefScanner;

fn main() {
    let megabytes: usize = std::env::args()
        .nth(1)
        .map_or(256, |arg| arg.parse().expect("MEGABYTES is a number"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let patterns = dir.path().join("patterns");

    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let candidates: Vec<String> = (0..200)
        .map(|_| {
            let digest: Vec<u8> = (0..20).map(|_| next() as u8).collect();
            nixbase32::encode(&digest)
        })
        .collect();
    let mut file = File::create(&data).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..megabytes {
        for (j, byte) in chunk.iter_mut().enumerate() {
            let r = next();
            *byte = if (j / 4096) % 2 == 0 {
                r as u8
            } else {
                TEXT[(r % TEXT.len() as u64) as usize]
            };
        }
        // One real reference in every tenth megabyte.
        if i % 10 == 0 {
            let hash = candidates[i % candidates.len()].as_bytes();
            chunk[5000..5000 + hash.len()].copy_from_slice(hash);
        }
        file.write_all(&chunk).unwrap();
    }
    drop(file);
    std::fs::write(&patterns, candidates.join("\n")).unwrap();

    let ours = best_of_3(|| {
        let mut scanner = RefScanner::new(candidates.iter()).unwrap();
        let mut input = File::open(&data).unwrap();
        loop {
            let n = input.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            scanner.update(&chunk[..n]);
        }
        assert!(scanner.found_count() > 0);
    });
    let grep = best_of_3(|| {
        let status = Command::new("grep")
            .args(["-F", "-a", "-c", "-f"])
            .arg(&patterns)
            .arg(&data)
            .stdout(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "grep -F failed");
    });
    let gb = (megabytes << 20) as f64 / 1e9;
    let rate = |d: Duration| gb / d.as_secs_f64();
    println!(
        "{{\"name\":\"reference scan, 200 candidates ({megabytes} MiB)\",\"value\":{:.3},\"unit\":\"GB/s\",\"peer\":\"grep -F -f (same strings)\",\"peer_value\":{:.3},\"target\":\"≥ 1 GB/s\"}}",
        rate(ours),
        rate(grep)
    );
}

/// Bytes drawn for the text half: letters (nix32 ones among them), digits,
/// spaces, slashes and newlines, in rough proportion to shell scripts and
/// configuration files.
const TEXT: &[u8] = b"etaoinshrdlucmfwypvbgkjqxz eeettaaoonnss   //--..__==\n\n0123456789";

fn best_of_3(mut f: impl FnMut()) -> Duration {
    f();
    (0..3)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}
