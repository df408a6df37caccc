//! Property-based fuzzing of the parsers that take outside input, beyond
//! what `derivation_props`, `nar_props` and the unit tests of `nixbase32`
//! cover (arbitrary and damaged ATerm, JSON and NAR bytes): store paths,
//! names and store directories; hashes in every spelling; content
//! addresses; nix32 over its own alphabet; ATerm and NAR streams made of
//! their own tokens, which reach far deeper than random bytes; derivation
//! JSON (version 4 and Nix 2.8's shape) with values of the wrong type; and
//! NAR token streams restored into a temporary folder.
//!
//! Every parser must return, never panic; what it accepts must print back
//! to something it reads as the same value.
//!
//! The budget is `LARDER_FUZZ_CASES` cases per property (default 256, so
//! that CI stays fast); raise it for a longer run, such as
//! `LARDER_FUZZ_CASES=100000 cargo test -p larder-store-core --test parser_fuzz`.

use std::io::Cursor;
use std::str::FromStr;

use larder_store_core::hash::HashEncoding;
use larder_store_core::{
    ContentAddress, ContentAddressMethod, Derivation, Hash, HashAlgo, StoreDir, StorePath, nar,
    nixbase32, store_path,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;

/// Cases per property: `LARDER_FUZZ_CASES`, else 256.
fn config() -> Config {
    let cases = std::env::var("LARDER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        // Fuzzing looks for panics; shrinking what it finds is enough, and
        // no regression files are written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings made mostly of the characters a parser cares about, so that
/// the cases get past the first check.
fn text_of(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(chars),
            1 => any::<char>(),
        ],
        0..max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

const NIX32: &str = "0123456789abcdfghijklmnpqrsvwxyz";
const NAME_CHARS: &str = "0123456789abcdfghijklmnpqrsvwxyz+-._?=e/ :";
const HASH_CHARS: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/=-:_";

fn algo() -> impl Strategy<Value = HashAlgo> {
    prop::sample::select(HashAlgo::ALL.to_vec())
}

/// A hash spelled in any encoding Nix accepts, then maybe damaged.
fn spelled_hash() -> impl Strategy<Value = String> {
    (
        algo(),
        prop::collection::vec(any::<u8>(), 64),
        prop::sample::select(vec![
            HashEncoding::Base16,
            HashEncoding::Nix32,
            HashEncoding::Base64,
            HashEncoding::Sri,
        ]),
        any::<bool>(),
        any::<prop::sample::Index>(),
        prop::option::of(prop::sample::select(HASH_CHARS.chars().collect::<Vec<_>>())),
        any::<bool>(),
    )
        .prop_map(|(algo, bytes, encoding, prefixed, at, replace, cut)| {
            let hash = Hash::from_digest(algo, &bytes[..algo.size()]).expect("right length");
            let mut chars: Vec<char> = hash
                .encode(encoding, prefixed || encoding == HashEncoding::Sri)
                .chars()
                .collect();
            let i = at.index(chars.len());
            match replace {
                Some(c) => chars[i] = c,
                None if cut => chars.truncate(i),
                None => {}
            }
            chars.into_iter().collect()
        })
}

/// A base name: nix32 hash part and a name, maybe damaged.
fn base_name() -> impl Strategy<Value = String> {
    prop_oneof![
        (text_of(NIX32, 34), text_of(NAME_CHARS, 12))
            .prop_map(|(hash, name)| format!("{hash}-{name}")),
        (any::<[u8; 20]>(), text_of(NAME_CHARS, 230))
            .prop_map(|(digest, name)| format!("{}-{name}", nixbase32::encode(&digest))),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_paths_parse_or_fail(base in base_name(), dir in text_of("/nix/store.", 14), tail in text_of("/ab.", 6)) {
        if let Ok(path) = StorePath::from_base_name(&base) {
            prop_assert_eq!(path.as_str(), base.as_str());
            prop_assert_eq!(StorePath::from_str(path.as_str()), Ok(path.clone()));
            prop_assert!(store_path::validate_name(path.name()).is_ok());
            prop_assert_eq!(StorePath::from_digest(&path.digest(), path.name()), Ok(path.clone()));
        }
        let _ = store_path::validate_name(&base);
        let store = StoreDir::default();
        let full = format!("/nix/store/{base}{tail}");
        if let Ok(path) = store.parse(&full) {
            prop_assert_eq!(store.display(&path), full.clone());
        }
        if let Ok((path, rest)) = store.parse_inside(&full) {
            prop_assert_eq!(format!("{}{rest}", store.display(&path)), full);
        }
        if let Ok(other) = StoreDir::new(&dir) {
            let _ = other.parse(&format!("{dir}/{base}"));
        }
    }

    #[test]
    fn hashes_parse_or_fail(spelled in spelled_hash(), raw in text_of(HASH_CHARS, 140), expected in prop::option::of(algo())) {
        for s in [&spelled, &raw] {
            let _ = s.parse::<HashAlgo>();
            let _ = Hash::parse_sri(s);
            let _ = Hash::from_str(s);
            for algo in HashAlgo::ALL {
                let _ = Hash::parse_unprefixed(s, algo);
            }
            if let Ok(hash) = Hash::parse_any(s, expected) {
                for encoding in [HashEncoding::Base16, HashEncoding::Nix32, HashEncoding::Base64, HashEncoding::Sri] {
                    let printed = hash.encode(encoding, true);
                    prop_assert_eq!(Hash::parse_prefixed(&printed), Ok(hash));
                }
            }
        }
    }

    #[test]
    fn content_addresses_parse_or_fail(
        method in prop::sample::select(vec!["fixed:", "fixed:r:", "text:", "fixed:git:", "", "r:", "fixed:text:"]),
        hash in spelled_hash(),
        raw in text_of("fixed:text:r:git:sha256", 40),
    ) {
        let spelled = format!("{method}{hash}");
        for s in [&spelled, &raw] {
            let _ = ContentAddressMethod::parse_with_algo(s);
            let _ = ContentAddressMethod::from_json_name(s);
            if let Ok(ca) = ContentAddress::parse(s) {
                prop_assert_eq!(ContentAddress::parse(&ca.render()), Ok(ca));
            }
        }
    }

    #[test]
    fn nix32_over_its_alphabet(s in text_of(NIX32, 110), len in 0usize..70) {
        let decoded = nixbase32::decode(&s, len);
        if let Ok(bytes) = &decoded {
            prop_assert_eq!(bytes.len(), len);
            prop_assert_eq!(nixbase32::encode(bytes), s.clone());
        }
        let fixed = nixbase32::decode_fixed::<20>(&s);
        if let Ok(bytes) = fixed {
            prop_assert_eq!(nixbase32::encode(&bytes), s);
        }
    }

    #[test]
    fn aterm_token_streams_never_panic(tokens in prop::collection::vec(aterm_token(), 0..80)) {
        let text: String = tokens.concat();
        let dir = StoreDir::default();
        for prefix in ["", "Derive(", "DrvWithVersion(\"xp-dyn-drv\","] {
            let input = format!("{prefix}{text}");
            if let Ok(drv) = Derivation::parse_aterm(input.as_bytes(), "x", &dir) {
                // What parses prints back to what parses the same.
                let printed = drv.to_aterm(&dir);
                let again = Derivation::parse_aterm(printed.as_bytes(), "x", &dir);
                prop_assert!(again.as_ref().is_ok_and(|again| *again == drv), "{:?}", again);
            }
        }
    }

    #[test]
    fn json_with_wrong_types_never_panics(
        legacy in any::<bool>(),
        at in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        value in json_value(),
    ) {
        let mut doc: Value = serde_json::from_str(if legacy { LEGACY } else { V4 }).expect("valid JSON");
        replace_somewhere(&mut doc, &at, value);
        let text = doc.to_string();
        let dir = StoreDir::default();
        let _ = Derivation::from_json(&text, &dir);
        let _ = Derivation::from_json_v4(&text);
        let _ = Derivation::from_json_legacy(&text, &dir);
    }

    #[test]
    fn nar_token_streams_restore_or_fail(tokens in prop::collection::vec(nar_token(), 0..40)) {
        let mut bytes = Vec::new();
        nar_string(&mut bytes, b"nix-archive-1");
        for token in &tokens {
            nar_string(&mut bytes, token);
        }
        let checked = nar::validate(&mut Cursor::new(&bytes));
        let dir = tempfile::tempdir().expect("temp folder");
        let dest = dir.path().join("dest");
        let restored = nar::restore(&mut Cursor::new(&bytes), &dest);
        prop_assert_eq!(checked.is_ok(), restored.is_ok());
        if let Ok(size) = restored {
            let mut again = Vec::new();
            nar::dump_path(&dest, &mut again).expect("dump what was restored");
            prop_assert!(again == bytes[..usize::try_from(size).expect("small")]);
        }
        // Nothing is ever written outside the destination.
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        prop_assert!(names.is_empty() || names == ["dest"], "{:?}", names);
    }
}

/// The pieces `.drv` files are made of, valid and not.
fn aterm_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "(",
            ")",
            "[",
            "]",
            ",",
            "\"",
            "Derive(",
            "\"out\"",
            "\"\"",
            "\"r:sha256\"",
            "\"text:sha256\"",
            "\"sha256\"",
            "\"r:sha257\"",
            "\"name\"",
            "\"a/b\"",
            "\"..\"",
            "\"/nix/store/7pmgh90xrjgkv7d11xdjchz70rd1b129-x\"",
            "\"/nix/store/ikr23pcnym9liia42iw56xdh20ldlzbw-simple.drv\"",
            "\"/nix/store/abc\"",
            "\"0000000000000000000000000000000000000000000000000000000000000000\"",
            "\\",
            "\\n",
            "\\\"",
            "\"x86_64-linux\"",
        ])
        .prop_map(str::to_owned),
        text_of("abc\\\"\n", 6).prop_map(|s| format!("\"{s}\"")),
    ]
}

/// The strings NAR streams are made of, valid and not.
fn nar_token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "(", ")", "type", "regular", "directory", "symlink", "entry", "name", "node",
            "contents", "executable", "target", "", ".", "..", "a", "b", "a/b", "f\0o", "nix-archive-1",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

/// Appends a NAR string: length, bytes, zero padding to 8.
fn nar_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "out",
            "nar",
            "flat",
            "text",
            "git",
            "sha256",
            "r:sha256",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "/nix/store/ikr23pcnym9liia42iw56xdh20ldlzbw-simple.drv",
            "7pmgh90xrjgkv7d11xdjchz70rd1b129-simple",
            "../x",
            "a/b",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "path",
                    "method",
                    "hash",
                    "hashAlgo",
                    "impure",
                    "outputs",
                    "dynamicOutputs",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a path chosen by `at` (one index per level) with
/// `value`; a path may stop early, replacing a whole object or array.
fn replace_somewhere(doc: &mut Value, at: &[prop::sample::Index], value: Value) {
    let Some((first, rest)) = at.split_first() else {
        *doc = value;
        return;
    };
    let child = match doc {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(first.index(map.len())).cloned();
            key.and_then(|k| map.get_mut(&k))
        }
        Value::Array(items) if !items.is_empty() => {
            let i = first.index(items.len());
            items.get_mut(i)
        }
        _ => None,
    };
    match child {
        Some(child) => replace_somewhere(child, rest, value),
        None => *doc = value,
    }
}

const V4: &str = r#"{
  "name": "diamond", "version": 4, "system": "x86_64-linux", "builder": "/bin/sh",
  "args": ["-c", "echo > $out"],
  "env": {"name": "diamond", "out": "", "builder": "/bin/sh", "system": "x86_64-linux"},
  "inputs": {
    "srcs": ["65jndfrn0nh8l79vj6wa9r5n96mbiisk-hello.txt"],
    "drvs": {"ikr23pcnym9liia42iw56xdh20ldlzbw-simple.drv": {"outputs": ["out"], "dynamicOutputs": {}}}
  },
  "outputs": {
    "out": {},
    "dev": {"path": "7pmgh90xrjgkv7d11xdjchz70rd1b129-simple-dev"},
    "fixed": {"method": "flat", "hash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
    "floating": {"method": "nar", "hashAlgo": "sha256"}
  }
}"#;

const LEGACY: &str = r#"{
  "/nix/store/ikr23pcnym9liia42iw56xdh20ldlzbw-simple.drv": {
    "outputs": {
      "out": {"path": "/nix/store/7pmgh90xrjgkv7d11xdjchz70rd1b129-simple"},
      "fixed": {"path": "/nix/store/7pmgh90xrjgkv7d11xdjchz70rd1b129-fixed", "hashAlgo": "r:sha256",
                "hash": "0000000000000000000000000000000000000000000000000000000000000000"}
    },
    "inputSrcs": ["/nix/store/65jndfrn0nh8l79vj6wa9r5n96mbiisk-hello.txt"],
    "inputDrvs": {"/nix/store/pxk31j48ras0ipi01sh2pq247d4wgz00-input-drv.drv": ["out"]},
    "system": "x86_64-linux", "builder": "/bin/sh", "args": ["-c", "echo simple > $out"],
    "env": {"name": "simple", "out": "/nix/store/7pmgh90xrjgkv7d11xdjchz70rd1b129-simple"}
  }
}"#;
