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

/// Builds a file tree from its description in `nar.jsonl`.
fn build_tree(path: &std::path::Path, node: &Value) {
    use std::os::unix::fs::PermissionsExt as _;
    match node["type"].as_str().unwrap() {
        "regular" => {
            let contents = match (node.get("contents_utf8"), node.get("contents_base64")) {
                (Some(Value::String(text)), _) => text.clone().into_bytes(),
                (_, Some(Value::String(b64))) => decode_base64(b64),
                _ => Vec::new(),
            };
            std::fs::write(path, contents).unwrap();
            let mode = node.get("mode").and_then(Value::as_u64).map_or_else(
                || {
                    if node["executable"] == true {
                        0o755
                    } else {
                        0o644
                    }
                },
                |m| m as u32,
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        "symlink" => std::os::unix::fs::symlink(node["target"].as_str().unwrap(), path).unwrap(),
        "directory" => {
            std::fs::create_dir(path).unwrap();
            for (name, child) in node["entries"].as_object().unwrap() {
                build_tree(&path.join(name), child);
            }
        }
        other => panic!("unknown node type {other}"),
    }
}

#[test]
fn nar_dump_restore_hash_and_add_match_nix() {
    let dir = tempfile::tempdir().unwrap();
    for case in jsonl("nix-2.8/nar.jsonl") {
        let id = case["id"].as_str().unwrap();
        let tree = dir.path().join(id);
        build_tree(&tree, &case["tree"]);
        let expected = std::fs::read(vector(&format!(
            "nix-2.8/{}",
            case["nar_file"].as_str().unwrap()
        )))
        .unwrap();

        let dump = run(larder().args(["nar", "dump"]).arg(&tree));
        assert!(dump.status.success(), "{id}");
        assert!(dump.stdout == expected, "{id}: NAR bytes differ");

        let hash = stdout_of(larder().args(["hash", "path"]).arg(&tree));
        assert_eq!(
            hash.trim(),
            case["nar_sha256_sri"].as_str().unwrap(),
            "{id}"
        );
        let hash = stdout_of(larder().args(["hash", "path", "--base32"]).arg(&tree));
        assert_eq!(
            hash.trim(),
            case["nar_sha256_nix32"].as_str().unwrap(),
            "{id}"
        );

        let added = stdout_of(
            larder()
                .args(["store", "add", "--dry-run", "--name", id])
                .arg(&tree),
        );
        assert_eq!(
            added.trim(),
            case["source_store_path"].as_str().unwrap(),
            "{id}"
        );

        let restored = dir.path().join(format!("{id}.restored"));
        let mut restore = larder()
            .args(["nar", "restore"])
            .arg(&restored)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut restore.stdin.take().unwrap(), &expected).unwrap();
        assert!(restore.wait().unwrap().success(), "{id}: restore");
        let again = run(larder().args(["nar", "dump"]).arg(&restored));
        assert!(
            again.stdout == expected,
            "{id}: restored tree dumps differently"
        );
    }
}

#[test]
fn store_add_dry_run_gives_nix_fixed_paths() {
    let dir = tempfile::tempdir().unwrap();
    for case in jsonl("nix-2.8/store-paths.jsonl") {
        let (Some("fixed"), Some("flat"), Some("sha256")) = (
            case["kind"].as_str(),
            case["method"].as_str(),
            case["algo"].as_str(),
        ) else {
            continue;
        };
        let content = match (case.get("content_utf8"), case.get("content_base64")) {
            (Some(Value::String(text)), _) => text.clone().into_bytes(),
            (_, Some(Value::String(b64))) => decode_base64(b64),
            _ => continue,
        };
        let file = dir.path().join("content");
        std::fs::write(&file, content).unwrap();
        let name = case["name"].as_str().unwrap();
        let out = stdout_of(
            larder()
                .args([
                    "store",
                    "add",
                    "--dry-run",
                    "--mode",
                    "flat",
                    "--name",
                    name,
                ])
                .arg(&file),
        );
        assert_eq!(
            out.trim(),
            case["store_path"].as_str().unwrap(),
            "{}",
            case["id"]
        );
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
    let not_a_nar = dir.path().join("not-a-nar");
    let cases: [&[&std::ffi::OsStr]; 7] = [
        &["derivation".as_ref(), "show".as_ref(), garbled.as_os_str()],
        &["derivation".as_ref(), "show".as_ref(), bad_json.as_os_str()],
        &["hash".as_ref(), "file".as_ref(), missing.as_os_str()],
        &["hash".as_ref(), "path".as_ref(), missing.as_os_str()],
        &[
            "hash".as_ref(),
            "file".as_ref(),
            "--type".as_ref(),
            "sha3".as_ref(),
            garbled.as_os_str(),
        ],
        // Standard input is the JSON file: not a NAR.
        &["nar".as_ref(), "restore".as_ref(), not_a_nar.as_os_str()],
        &[
            "store".as_ref(),
            "add".as_ref(),
            "--dry-run".as_ref(),
            "--name".as_ref(),
            "a b".as_ref(),
            bad_json.as_os_str(),
        ],
    ];
    for args in cases {
        let out = run(larder()
            .args(args)
            .stdin(std::fs::File::open(&bad_json).unwrap()));
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
