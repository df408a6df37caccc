//! The `larder` commands that need no store: output as Nix's equivalents,
//! bad input as one line on standard error and exit status 1.

use serde_json::Value;

use crate::support::{larder, run, stdout_of, vector};

fn jsonl(path: &str) -> Vec<Value> {
    std::fs::read_to_string(vector(path))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn hash_file_matches_every_nix_vector() {
    let dir = tempfile::tempdir().unwrap();
    for case in jsonl("nix-2.8/hashes.jsonl") {
        let content = match (case.get("content_utf8"), case.get("content_base64")) {
            (Some(Value::String(text)), _) => text.clone().into_bytes(),
            (_, Some(Value::String(b64))) => decode_base64(b64),
            _ => panic!("case without content: {case}"),
        };
        let file = dir.path().join("content");
        std::fs::write(&file, content).unwrap();
        let algo = case["algo"].as_str().unwrap();
        for (flag, field) in [
            ("--base16", "base16"),
            ("--base32", "nix32"),
            ("--base64", "base64"),
            ("--sri", "sri"),
        ] {
            let out = stdout_of(
                larder()
                    .args(["hash", "file", "--type", algo, flag])
                    .arg(&file),
            );
            assert_eq!(
                out.trim(),
                case[field].as_str().unwrap(),
                "{} {flag}",
                case["id"]
            );
        }
    }
}

#[test]
fn derivation_show_gives_the_drv_path_and_output_paths() {
    for case in jsonl("nix-2.8/drv.jsonl") {
        let drv = vector(&format!("nix-2.8/{}", case["aterm_file"].as_str().unwrap()));
        let out = stdout_of(
            larder()
                .args(["derivation", "show", "--import"])
                .arg(vector("nix-2.8/drv/store"))
                .arg(&drv),
        );
        let shown: Value = serde_json::from_str(&out).unwrap();
        let drv_path = case["drv_path"].as_str().unwrap();
        let json = &shown[drv_path];
        assert_eq!(json["version"], 4, "{}: {out}", case["id"]);
        for (output, path) in case["outputs"].as_object().unwrap() {
            if let Some(path) = path.as_str() {
                // Version 4 names input-addressed outputs by base name and
                // fixed outputs by content address; both give this path.
                let base = path.strip_prefix("/nix/store/").unwrap();
                let shown_path = json["outputs"][output]["path"].as_str();
                assert!(
                    shown_path.is_none_or(|p| p == base),
                    "{}: output {output}",
                    case["id"]
                );
            }
        }
    }
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let garbled = dir.path().join("garbled.drv");
    std::fs::write(&garbled, "Derive([(\"out\",").unwrap();
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{\"version\": 4, \"name\": 3}").unwrap();
    let missing = dir.path().join("missing");
    for args in [
        vec![
            "derivation".into(),
            "show".into(),
            garbled.clone().into_os_string(),
        ],
        vec![
            "derivation".into(),
            "show".into(),
            bad_json.clone().into_os_string(),
        ],
        vec![
            "hash".into(),
            "file".into(),
            missing.clone().into_os_string(),
        ],
        vec![
            "hash".into(),
            "file".into(),
            "--type".into(),
            "sha3".into(),
            garbled.into_os_string(),
        ],
    ] {
        let out = run(larder().args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        bits = bits << 6 | value;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    out
}
