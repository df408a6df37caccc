//! Property tests of the NAR writer and parser: generated trees survive
//! dump, parse, restore and dump again, and no input makes the parser panic.

#![cfg(test)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use larder_store_core::nar;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Node {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Directory(BTreeMap<Vec<u8>, Node>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..12,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(executable, contents)| Node::File {
                executable,
                contents
            }
        ),
        prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..40)
            .prop_map(Node::Symlink),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop::collection::btree_map(name(), inner, 0..6).prop_map(Node::Directory)
    })
}

fn build(node: &Node, at: &Path) {
    match node {
        Node::File {
            executable,
            contents,
        } => {
            fs::write(at, contents).unwrap();
            let mode = if *executable { 0o700 } else { 0o600 };
            fs::set_permissions(at, fs::Permissions::from_mode(mode)).unwrap();
        }
        Node::Symlink(target) => std::os::unix::fs::symlink(OsStr::from_bytes(target), at).unwrap(),
        Node::Directory(entries) => {
            fs::create_dir(at).unwrap();
            for (name, child) in entries {
                build(child, &at.join(OsStr::from_bytes(name)));
            }
        }
    }
}

/// An independent encoder of the model, straight from the grammar.
fn encode(node: &Node, out: &mut Vec<u8>) {
    fn s(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    s(out, b"(");
    s(out, b"type");
    match node {
        Node::File {
            executable,
            contents,
        } => {
            s(out, b"regular");
            if *executable {
                s(out, b"executable");
                s(out, b"");
            }
            s(out, b"contents");
            s(out, contents);
        }
        Node::Symlink(target) => {
            s(out, b"symlink");
            s(out, b"target");
            s(out, target);
        }
        Node::Directory(entries) => {
            s(out, b"directory");
            // A BTreeMap of byte strings iterates in byte order.
            for (name, child) in entries {
                for tag in [b"entry" as &[u8], b"(", b"name", name, b"node"] {
                    s(out, tag);
                }
                encode(child, out);
                s(out, b")");
            }
        }
    }
    s(out, b")");
}

fn model_nar(node: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&13u64.to_le_bytes());
    out.extend_from_slice(b"nix-archive-1\0\0\0");
    encode(node, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dump_parse_restore_dump(tree in node()) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        build(&tree, &root);
        let mut dumped = Vec::new();
        let size = nar::dump_path(&root, &mut dumped).unwrap();
        prop_assert_eq!(size, dumped.len() as u64);
        prop_assert!(dumped == model_nar(&tree));
        prop_assert_eq!(nar::validate(&mut Cursor::new(&dumped)).unwrap(), size);

        let restored = dir.path().join("restored");
        nar::restore(&mut Cursor::new(&dumped), &restored).unwrap();
        let mut again = Vec::new();
        nar::dump_path(&restored, &mut again).unwrap();
        prop_assert!(again == dumped);

        let hashed = nar::hash_path(&root).unwrap();
        prop_assert_eq!(hashed.size, size);
        prop_assert_eq!(hashed.hash, larder_store_core::HashAlgo::Sha256.digest(&dumped));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = nar::validate(&mut Cursor::new(&bytes));
        let mut with_magic = model_nar(&Node::Directory(BTreeMap::new()));
        with_magic.truncate(24);
        with_magic.extend_from_slice(&bytes);
        let _ = nar::validate(&mut Cursor::new(&with_magic));
    }

    #[test]
    fn damaged_nars_never_panic(
        tree in node(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = model_nar(&tree);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let checked = nar::validate(&mut Cursor::new(&bytes));
        let mut copied = Vec::new();
        let copy = nar::copy(&mut Cursor::new(&bytes), &mut copied);
        prop_assert_eq!(checked.is_ok(), copy.is_ok());
        if let Ok(size) = checked {
            prop_assert!(copied == bytes[..usize::try_from(size).unwrap()]);
            // Whatever the parser accepts restores and dumps to the same bytes.
            let dir = tempfile::tempdir().unwrap();
            let restored = dir.path().join("restored");
            nar::restore(&mut Cursor::new(&bytes), &restored).unwrap();
            let mut again = Vec::new();
            nar::dump_path(&restored, &mut again).unwrap();
            prop_assert!(again == copied);
        } else {
            let dir = tempfile::tempdir().unwrap();
            prop_assert!(nar::restore(&mut Cursor::new(&bytes), &dir.path().join("r")).is_err());
        }
    }
}
