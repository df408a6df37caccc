//! The NAR writer, parser and restorer against real Nix: the Nix 2.8 cases
//! of `vectors/nix-2.8/nar.jsonl` and the upstream test NARs.

#![cfg(test)]

use std::fs;
use std::io::{self, Cursor};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use data_encoding::{BASE64, HEXLOWER};
use larder_store_core::nar::{self, Dumper, ParseError};
use larder_store_core::store_path::StoreReferences;
use larder_store_core::{ContentAddressMethod, HashAlgo, StoreDir};
use serde_json::Value;

const NIX_2_8: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vectors/nix-2.8");
const UPSTREAM_NARS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../vectors/nix-upstream/src/libutil-tests/data/nars"
);

/// Creates the object a `tree` description of `nar.jsonl` describes.
fn build(tree: &Value, at: &Path) {
    match tree["type"].as_str().unwrap() {
        "regular" => {
            let contents = match (tree.get("contents_utf8"), tree.get("contents_base64")) {
                (Some(s), _) => s.as_str().unwrap().as_bytes().to_vec(),
                (None, Some(b)) => BASE64.decode(b.as_str().unwrap().as_bytes()).unwrap(),
                (None, None) => panic!("regular file without contents"),
            };
            fs::write(at, contents).unwrap();
            let mode = match tree.get("mode") {
                Some(m) => u32::try_from(m.as_u64().unwrap()).unwrap(),
                None if tree["executable"].as_bool().unwrap() => 0o755,
                None => 0o644,
            };
            fs::set_permissions(at, fs::Permissions::from_mode(mode)).unwrap();
        }
        "symlink" => std::os::unix::fs::symlink(tree["target"].as_str().unwrap(), at).unwrap(),
        "directory" => {
            fs::create_dir(at).unwrap();
            for (name, child) in tree["entries"].as_object().unwrap() {
                build(child, &at.join(name));
            }
        }
        other => panic!("unknown type {other}"),
    }
}

fn cases() -> Vec<Value> {
    fs::read_to_string(format!("{NIX_2_8}/nar.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn nix_2_8_cases() {
    let cases = cases();
    assert_eq!(cases.len(), 14);
    let store = StoreDir::default();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let expected =
            fs::read(format!("{NIX_2_8}/{}", case["nar_file"].as_str().unwrap())).unwrap();
        assert_eq!(
            expected.len() as u64,
            case["nar_size"].as_u64().unwrap(),
            "{id}"
        );

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(id);
        build(&case["tree"], &root);

        // Dump: exact bytes, with the size returned.
        let mut dumped = Vec::new();
        let size = nar::dump_path(&root, &mut dumped).unwrap();
        assert!(dumped == expected, "{id}: NAR bytes differ from Nix's");
        assert_eq!(size, expected.len() as u64, "{id}");

        // Hashes, all four from one walk, and the SHA-256 encodings.
        let mut dumper = Dumper::with_buffer_size(4096);
        let (hashes, size) = dumper.hash_path_multi(&root, &HashAlgo::ALL).unwrap();
        assert_eq!(size, expected.len() as u64);
        for (algo, hash) in HashAlgo::ALL.iter().zip(&hashes) {
            let field = format!("nar_{algo}_base16");
            assert_eq!(
                hash.to_base16(),
                case[&field].as_str().unwrap(),
                "{id} {algo}"
            );
        }
        let nar_hash = nar::hash_path(&root).unwrap();
        assert_eq!(nar_hash.size, size);
        assert_eq!(
            nar_hash.hash.to_nix32(),
            case["nar_sha256_nix32"].as_str().unwrap()
        );
        assert_eq!(
            nar_hash.hash.to_sri(),
            case["nar_sha256_sri"].as_str().unwrap()
        );
        assert_eq!(
            HEXLOWER.encode(nar_hash.hash.digest()),
            case["nar_sha256_base16"].as_str().unwrap()
        );

        // The "source" store path.
        let path = store
            .make_fixed_output_path(
                id,
                ContentAddressMethod::Nar,
                &nar_hash.hash,
                &StoreReferences::default(),
            )
            .unwrap();
        assert_eq!(
            store.display(&path),
            case["source_store_path"].as_str().unwrap()
        );

        // Parse, restore, dump again: the same bytes.
        assert_eq!(nar::validate(&mut Cursor::new(&expected)).unwrap(), size);
        let restored = dir.path().join("restored");
        assert_eq!(
            nar::restore(&mut Cursor::new(&expected), &restored).unwrap(),
            size
        );
        let mut again = Vec::new();
        nar::dump_path(&restored, &mut again).unwrap();
        assert!(again == expected, "{id}: restored tree dumps differently");

        // Copy: the same bytes, and nothing past the NAR's end consumed.
        let mut input = Cursor::new([expected.as_slice(), b"trailing"].concat());
        let mut copied = Vec::new();
        assert_eq!(nar::copy(&mut input, &mut copied).unwrap(), size);
        assert!(copied == expected);
        assert_eq!(input.position(), size);
    }
}

#[test]
fn restored_modes_are_nix_restore_modes() {
    let case = cases()
        .into_iter()
        .find(|c| c["id"] == "nar-modes")
        .unwrap();
    let nar_bytes = fs::read(format!("{NIX_2_8}/{}", case["nar_file"].as_str().unwrap())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    nar::restore(&mut Cursor::new(&nar_bytes), &root).unwrap();
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&root), 0o755);
    assert_eq!(mode(&root.join("m0744")), 0o755);
    assert_eq!(mode(&root.join("m0611")), 0o644);
}

#[test]
fn restore_refuses_an_existing_destination() {
    let case = cases().into_iter().find(|c| c["id"] == "nar-file").unwrap();
    let nar_bytes = fs::read(format!("{NIX_2_8}/{}", case["nar_file"].as_str().unwrap())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = nar::restore(&mut Cursor::new(&nar_bytes), dir.path()).unwrap_err();
    match err {
        ParseError::Sink { source, .. } => assert_eq!(source.kind(), io::ErrorKind::AlreadyExists),
        other => panic!("unexpected {other}"),
    }
}

/// Which error each upstream NAR must give; `None` for the valid ones.
fn upstream_expectation(name: &str) -> Option<fn(&ParseError) -> bool> {
    Some(match name {
        "regular-one-byte-zero-padding" => return None,
        "invalid-tag-instead-of-contents" => {
            |e| matches!(e, ParseError::UnexpectedTag { expected: "'contents'", got, .. } if got == "AAAAAAAA")
        }
        "nul-character" | "dot" | "dotdot" | "slash" | "empty" => {
            |e| matches!(e, ParseError::InvalidName { .. })
        }
        "executable-after-contents" => {
            |e| matches!(e, ParseError::UnexpectedTag { expected: "')'", got, .. } if got == "executable")
        }
        "name-after-node" => {
            |e| matches!(e, ParseError::UnexpectedTag { expected: "'name'", got, .. } if got == "node")
        }
        "regular-one-byte-non-zero-padding" => {
            |e| matches!(e, ParseError::NonZeroPadding { offset: 0x61 })
        }
        "regular-truncated-large-contents" | "regular-truncated-padding" => {
            |e| matches!(e, ParseError::Truncated { .. })
        }
        other => panic!("no expectation for upstream NAR {other}"),
    })
}

#[test]
fn upstream_nars() {
    let mut seen = 0;
    for entry in fs::read_dir(UPSTREAM_NARS).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let bytes = fs::read(&path).unwrap();
        let result = nar::validate(&mut Cursor::new(&bytes));
        match upstream_expectation(&name) {
            None => assert_eq!(result.unwrap(), bytes.len() as u64, "{name}"),
            Some(check) => {
                let err = result.expect_err(&name);
                assert!(check(&err), "{name}: unexpected error {err}");
                assert!(
                    err.to_string().starts_with("bad archive: "),
                    "{name}: {err}"
                );
            }
        }
        seen += 1;
    }
    assert_eq!(seen, 12);
}

#[test]
fn upstream_messages_match_nix() {
    let messages = [
        (
            "invalid-tag-instead-of-contents",
            "bad archive: expected tag 'contents', got 'AAAAAAAA'",
        ),
        (
            "nul-character",
            "bad archive: NAR contains invalid file name 'f",
        ),
        ("dot", "bad archive: NAR contains invalid file name '.'"),
        ("dotdot", "bad archive: NAR contains invalid file name '..'"),
        ("slash", "bad archive: NAR contains invalid file name 'x/y'"),
        ("empty", "bad archive: NAR contains invalid file name ''"),
        (
            "executable-after-contents",
            "bad archive: expected tag ')', got 'executable'",
        ),
        ("name-after-node", "bad archive: expected tag 'name'"),
    ];
    for (name, message) in messages {
        let bytes = fs::read(format!("{UPSTREAM_NARS}/{name}.nar")).unwrap();
        let err = nar::validate(&mut Cursor::new(&bytes)).unwrap_err();
        assert!(err.to_string().contains(message), "{name}: {err}");
    }
}

#[test]
fn flat_hashes_match_nix() {
    let dir = tempfile::tempdir().unwrap();
    let mut dumper = Dumper::with_buffer_size(4096);
    let lines = fs::read_to_string(format!("{NIX_2_8}/hashes.jsonl")).unwrap();
    for line in lines.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let contents = match (case.get("content_utf8"), case.get("content_base64")) {
            (Some(s), _) => s.as_str().unwrap().as_bytes().to_vec(),
            (None, Some(b)) => BASE64.decode(b.as_str().unwrap().as_bytes()).unwrap(),
            (None, None) => panic!("case without contents"),
        };
        let path = dir.path().join("file");
        fs::write(&path, &contents).unwrap();
        let algo: HashAlgo = case["algo"].as_str().unwrap().parse().unwrap();
        let hash = dumper.hash_file_flat(&path, algo).unwrap();
        assert_eq!(
            hash.to_base16(),
            case["base16"].as_str().unwrap(),
            "{}",
            case["id"]
        );
        assert_eq!(nar::hash_file_flat(&path, algo).unwrap(), hash);
    }
}

#[test]
fn dump_bytes_is_the_nar_of_a_file() {
    let case = cases().into_iter().find(|c| c["id"] == "nar-file").unwrap();
    let expected = fs::read(format!("{NIX_2_8}/{}", case["nar_file"].as_str().unwrap())).unwrap();
    let mut out = Vec::new();
    let size = nar::dump_bytes(b"hello\n", &mut out).unwrap();
    assert!(out == expected);
    assert_eq!(size, nar::write::dump_bytes_len(6));
}

#[test]
fn matches_installed_nix_store_dump() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir(&root).unwrap();
    // Names Nix must sort by raw bytes, including invalid UTF-8 and the
    // longest name a file system allows.
    for name in [
        &b"\xff\xfe"[..],
        b"Z",
        b"a",
        b"\xc3\xa9",
        b"-",
        b".hidden",
        &[b'n'; 255],
    ] {
        fs::write(root.join(OsStr::from_bytes(name)), name).unwrap();
    }
    let exe = root.join("exe");
    fs::write(&exe, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o500)).unwrap();
    let mut deep = root.join("deep");
    // root, deep and 61 more levels put `up` at depth 63, the deepest allowed.
    for _ in 0..61 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    std::os::unix::fs::symlink("../../../a", deep.join("up")).unwrap();

    let output = match Command::new("nix-store").arg("--dump").arg(&root).output() {
        Ok(output) if output.status.success() => output.stdout,
        _ => {
            eprintln!("skipping: nix-store is not installed (or could not dump)");
            return;
        }
    };
    let mut ours = Vec::new();
    nar::dump_path(&root, &mut ours).unwrap();
    assert!(ours == output, "NAR differs from nix-store --dump");
}
