//! Output checks, each violated and satisfied, in the plain (environment)
//! and structured-attributes forms.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{TestStore, sh_drv};
use larder_builder::{BuildError, FailureKind};
use larder_store_core::StorePath;
use larder_store_core::derivation::Derivation;

/// `leaf` <- `dep` <- the checked output; returns the store, the
/// derivation path and outputs of `dep`, and `leaf`'s output.
fn setup() -> (TestStore, StorePath, StorePath, StorePath) {
    let t = TestStore::new();
    let leaf = sh_drv(t.store_dir(), "leaf", "echo leaf > $out", &["out"]);
    let leaf_out = t.build(&leaf).1.unwrap().outputs["out"].path.clone();
    let mut dep = sh_drv(
        t.store_dir(),
        "dep",
        &format!("echo {} > $out", t.store_dir().display(&leaf_out)),
        &["out"],
    );
    dep.input_drvs.insert(
        leaf.drv_path(t.store_dir()),
        BTreeSet::from(["out".to_owned()]),
    );
    let dep_drv = t.write_drv(&dep);
    let dep_out = t.build(&dep).1.unwrap().outputs["out"].path.clone();
    (t, dep_drv, dep_out, leaf_out)
}

/// A derivation whose output refers to `dep_out` and to itself.
fn plain(
    t: &TestStore,
    dep_drv: &StorePath,
    dep_out: &StorePath,
    attrs: &[(&str, String)],
) -> Derivation {
    let script = format!("echo {} $out > $out", t.store_dir().display(dep_out));
    let key: String = attrs.iter().map(|(k, v)| format!("{k}={v};")).collect();
    let mut drv = sh_drv(
        t.store_dir(),
        "checked",
        &format!("{script} # {key}"),
        &["out"],
    );
    drv.input_drvs
        .insert(dep_drv.clone(), BTreeSet::from(["out".to_owned()]));
    for (k, v) in attrs {
        drv.env.insert((*k).to_owned(), v.clone());
    }
    drv
}

/// The same with structured attributes and `outputChecks.out = checks`.
fn structured(
    t: &TestStore,
    dep_drv: &StorePath,
    dep_out: &StorePath,
    checks: &serde_json::Value,
) -> Derivation {
    // The checks go into the (made-up) output path, so each variant has its own.
    let mut drv = plain(t, dep_drv, dep_out, &[("checks", checks.to_string())]);
    drv.args = vec![
        "-c".to_owned(),
        format!(
            "out=$(/usr/bin/sed -e 's/.*\"outputs\":{{\"out\":\"\\([^\"]*\\)\".*/\\1/' \"$NIX_ATTRS_JSON_FILE\"); echo {} $out > $out # {checks}",
            t.store_dir().display(dep_out)
        ),
    ];
    let json = serde_json::json!({
        "name": "checked",
        "builder": "/bin/sh",
        "system": "x86_64-linux",
        "outputChecks": { "out": checks },
    });
    drv.env.clear();
    drv.env.insert("__json".to_owned(), json.to_string());
    drv
}

fn violation(t: &TestStore, drv: &Derivation, paths: &[&StorePath]) -> BuildError {
    let err = t.build(drv).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputRejected, "{}", err.message);
    let out = drv.output_paths(t.store_dir())["out"].clone().unwrap();
    let mut want = format!(
        "output '{}' is not allowed to refer to the following paths:",
        t.store_dir().display(&out)
    );
    for p in paths {
        want.push_str(&format!("\n  {}", t.store_dir().display(p)));
    }
    assert_eq!(err.message, want);
    assert!(!t.store.is_valid(&out).unwrap());
    assert!(!t.real(&out).exists());
    err
}

#[test]
fn plain_reference_checks() {
    let (t, dep_drv, dep_out, leaf_out) = setup();
    let shown = |p: &StorePath| t.store_dir().display(p);
    // allowedReferences: present and empty allows nothing (not even self).
    let drv = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[("allowedReferences", String::new())],
    );
    let out = drv.output_paths(t.store_dir())["out"].clone().unwrap();
    let mut both = [&dep_out, &out];
    both.sort();
    violation(&t, &drv, &both);
    let ok = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[("allowedReferences", format!("{} out", shown(&dep_out)))],
    );
    t.build(&ok).1.unwrap();

    let drv = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[("disallowedReferences", shown(&dep_out))],
    );
    violation(&t, &drv, &[&dep_out]);
    let ok = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[("disallowedReferences", shown(&leaf_out))],
    );
    t.build(&ok).1.unwrap();

    // Requisites: the closure, without the output itself in the plain form.
    let drv = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[("allowedRequisites", shown(&dep_out))],
    );
    violation(&t, &drv, &[&leaf_out]);
    let ok = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[(
            "allowedRequisites",
            format!("{} {}", shown(&dep_out), shown(&leaf_out)),
        )],
    );
    t.build(&ok).1.unwrap();

    let drv = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[("disallowedRequisites", shown(&leaf_out))],
    );
    violation(&t, &drv, &[&leaf_out]);
    let ok = plain(
        &t,
        &dep_drv,
        &dep_out,
        &[("disallowedRequisites", "out".to_owned())],
    );
    t.build(&ok).1.unwrap();
}

#[test]
fn structured_checks() {
    let (t, dep_drv, dep_out, leaf_out) = setup();
    let shown = |p: &StorePath| t.store_dir().display(p);
    let drv = structured(&t, &dep_drv, &dep_out, &serde_json::json!({ "maxSize": 8 }));
    let out = drv.output_paths(t.store_dir())["out"].clone().unwrap();
    let err = t.build(&drv).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputRejected);
    assert!(
        err.message
            .starts_with(&format!("path '{}' is too large at ", shown(&out)))
            && err.message.ends_with(" bytes; limit is 8 bytes"),
        "{}",
        err.message
    );
    t.build(&structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "maxSize": 100000 }),
    ))
    .1
    .unwrap();

    let drv = structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "maxClosureSize": 300 }),
    );
    let err = t.build(&drv).1.unwrap_err();
    assert!(
        err.message.starts_with("closure of path '"),
        "{}",
        err.message
    );
    assert!(
        err.message.ends_with(" bytes; limit is 300 bytes"),
        "{}",
        err.message
    );
    t.build(&structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "maxClosureSize": 100000 }),
    ))
    .1
    .unwrap();

    // Structured requisite checks keep the output itself in its closure.
    let drv = structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "allowedRequisites": [shown(&dep_out), shown(&leaf_out)] }),
    );
    let out = drv.output_paths(t.store_dir())["out"].clone().unwrap();
    violation(&t, &drv, &[&out]);
    t.build(&structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "allowedRequisites": ["out", shown(&dep_out), shown(&leaf_out)] }),
    ))
    .1
    .unwrap();

    let drv = structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "disallowedReferences": [shown(&dep_out)] }),
    );
    violation(&t, &drv, &[&dep_out]);
    let drv = structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "disallowedRequisites": [shown(&leaf_out)] }),
    );
    violation(&t, &drv, &[&leaf_out]);
    let drv = structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "allowedReferences": ["out"] }),
    );
    violation(&t, &drv, &[&dep_out]);
    t.build(&structured(
        &t,
        &dep_drv,
        &dep_out,
        &serde_json::json!({ "allowedReferences": ["out", shown(&dep_out)], "disallowedRequisites": [] }),
    ))
    .1
    .unwrap();
}

#[test]
fn pass_as_file() {
    let t = TestStore::new();
    let mut drv = sh_drv(
        t.store_dir(),
        "paf",
        "cat $fooPath > $out; test -z \"$foo\"",
        &["out"],
    );
    drv.env.insert("passAsFile".to_owned(), "foo".to_owned());
    drv.env
        .insert("foo".to_owned(), "contents of foo\n".to_owned());
    let out = t.build(&drv).1.unwrap();
    assert_eq!(
        std::fs::read_to_string(t.real(&out.outputs["out"].path)).unwrap(),
        "contents of foo\n"
    );
}
