//! Released SQL scripts are frozen: an installed database was made by exactly those bytes, and
//! `ALTER EXTENSION ... UPDATE` replays them. A change belongs in a new upgrade script.
//! `sql/released.sha256` lists every versioned script with its SHA-256 (the output of
//! `sha256sum`); a new release adds its lines there.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

fn listed() -> BTreeMap<String, String> {
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    std::fs::read_to_string(sql.join("released.sha256"))
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (digest, name) = line.split_once("  ").expect("sha256sum format");
            (name.to_owned(), digest.to_owned())
        })
        .collect()
}

#[test]
fn released_scripts_never_change() {
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    for (name, expected) in listed() {
        let bytes = std::fs::read(sql.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let actual: String = Sha256::digest(&bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(
            actual, expected,
            "{name} was released and must not change: add an upgrade script instead"
        );
    }
}

#[test]
fn every_versioned_script_is_listed() {
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let listed = listed();
    for entry in std::fs::read_dir(sql).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("ae_events--") && name.ends_with(".sql") {
            assert!(
                listed.contains_key(&name),
                "{name} is not in sql/released.sha256 (add it when its release is made)"
            );
        }
    }
}
