//! Property tests of derivations: printing and parsing round-trip, and no
//! input makes the readers panic.

use larder_store_core::derivation::{DerivationOutput, HashModuloCache};
use larder_store_core::{
    ContentAddress, ContentAddressMethod, Derivation, Hash, HashAlgo, StoreDir, StorePath,
};
use proptest::prelude::*;

fn store_path(name: &'static str) -> impl Strategy<Value = StorePath> {
    any::<[u8; 20]>()
        .prop_map(move |digest| StorePath::from_digest(&digest, name).expect("a fixed valid name"))
}

fn algo() -> impl Strategy<Value = HashAlgo> {
    prop::sample::select(HashAlgo::ALL.to_vec())
}

fn method() -> impl Strategy<Value = ContentAddressMethod> {
    prop::sample::select(vec![
        ContentAddressMethod::Flat,
        ContentAddressMethod::Nar,
        ContentAddressMethod::Text,
    ])
}

fn output() -> impl Strategy<Value = DerivationOutput> {
    prop_oneof![
        store_path("out").prop_map(DerivationOutput::InputAddressed),
        (method(), algo(), prop::collection::vec(any::<u8>(), 64)).prop_map(
            |(method, algo, bytes)| {
                // Text content addresses are always SHA-256.
                let algo = if method == ContentAddressMethod::Text {
                    HashAlgo::Sha256
                } else {
                    algo
                };
                let hash = Hash::from_digest(algo, &bytes[..algo.size()]).expect("right length");
                DerivationOutput::Fixed(ContentAddress { method, hash })
            }
        ),
        (method(), algo()).prop_map(|(method, algo)| DerivationOutput::Floating { method, algo }),
        Just(DerivationOutput::Deferred),
    ]
}

fn output_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,5}"
}

prop_compose! {
    fn derivation()(
        name in "[a-z][a-z0-9+._?=-]{0,20}",
        outputs in prop::collection::btree_map(output_name(), output(), 0..4),
        input_drvs in prop::collection::btree_map(
            store_path("dep.drv"),
            prop::collection::btree_set(output_name(), 1..3),
            0..3,
        ),
        input_srcs in prop::collection::btree_set(store_path("src"), 0..3),
        system in any::<String>(),
        builder in any::<String>(),
        args in prop::collection::vec(any::<String>(), 0..4),
        env in prop::collection::btree_map(any::<String>(), any::<String>(), 0..5),
    ) -> Derivation {
        let mut drv = Derivation::new(&name).expect("generated names are valid");
        for (output, value) in outputs {
            drv.insert_output(&output, value).expect("generated outputs are valid");
        }
        drv.input_drvs = input_drvs;
        drv.input_srcs = input_srcs;
        drv.system = system;
        drv.builder = builder;
        drv.args = args;
        drv.env = env;
        drv
    }
}

proptest! {
    #[test]
    fn aterm_round_trip(drv in derivation()) {
        let dir = StoreDir::default();
        let printed = drv.to_aterm(&dir);
        let parsed = Derivation::parse_aterm(printed.as_bytes(), drv.name(), &dir).unwrap();
        prop_assert_eq!(&parsed, &drv);
        prop_assert_eq!(parsed.to_aterm(&dir), printed);
    }

    #[test]
    fn json_round_trip(drv in derivation()) {
        prop_assume!(!drv.env.contains_key("__json"));
        let json = drv.to_json_string();
        prop_assert_eq!(&Derivation::from_json_v4(&json).unwrap(), &drv);
        prop_assert_eq!(&Derivation::from_json(&json, &StoreDir::default()).unwrap(), &drv);
    }

    #[test]
    fn hashing_never_panics(drv in derivation()) {
        // Inputs are unknown to the source: hashing either fails cleanly
        // or, for fixed outputs and input-less derivations, succeeds.
        let mut cache = HashModuloCache::new(StoreDir::default());
        let mut none = |p: &StorePath| Err::<Derivation, _>(format!("no {p}"));
        let _ = cache.hash_modulo(&drv, true, &mut none);
        let mut filled = drv.clone();
        let _ = filled.fill_in_output_paths(&mut cache, &mut none);
        let _ = drv.check_output_paths(&mut cache, &mut none);
        let _ = drv.drv_path(&StoreDir::default());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_aterm_parser(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Derivation::parse_aterm(&bytes, "x", &StoreDir::default());
        let mut prefixed = b"Derive(".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = Derivation::parse_aterm(&prefixed, "x", &StoreDir::default());
    }

    #[test]
    fn damaged_aterm_never_panics(drv in derivation(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let dir = StoreDir::default();
        let mut bytes = drv.to_aterm(&dir).into_bytes();
        let i = at.index(bytes.len());
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] = byte;
        }
        let _ = Derivation::parse_aterm(&bytes, drv.name(), &dir);
    }

    #[test]
    fn arbitrary_strings_never_panic_the_json_reader(s in any::<String>()) {
        let dir = StoreDir::default();
        let _ = Derivation::from_json(&s, &dir);
        let _ = Derivation::from_json_v4(&s);
        let _ = Derivation::from_json_legacy(&s, &dir);
    }

    #[test]
    fn damaged_json_never_panics(drv in derivation(), at in any::<prop::sample::Index>(), c in any::<char>()) {
        let json = drv.to_json_string();
        let mut chars: Vec<char> = json.chars().collect();
        let i = at.index(chars.len());
        chars[i] = c;
        let damaged: String = chars.into_iter().collect();
        let _ = Derivation::from_json(&damaged, &StoreDir::default());
    }
}

#[test]
fn structured_attrs_accessor() {
    let mut drv = Derivation::new("x").unwrap();
    assert!(drv.structured_attrs().unwrap().is_none());
    drv.env
        .insert("__json".to_owned(), r#"{"b":[1,2],"a":"x"}"#.to_owned());
    let attrs = drv.structured_attrs().unwrap().unwrap();
    assert_eq!(attrs["a"], "x");
    // Written as an object, read back sorted, as Nix prints it.
    let back = Derivation::from_json_v4(&drv.to_json_string()).unwrap();
    assert_eq!(back.env["__json"], r#"{"a":"x","b":[1,2]}"#);
    drv.env.insert("__json".to_owned(), "not json".to_owned());
    assert!(drv.structured_attrs().is_err());
    // A `__json` that is not an object stays in the environment.
    let json = drv.to_json();
    assert_eq!(json["env"]["__json"], "not json");
    assert!(json.get("structuredAttrs").is_none());
}
