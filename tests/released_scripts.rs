//! SQL by kind: `sql/src/` holds the sources of the current version (loaded by `src/lib.rs`),
//! `sql/released/` the full install scripts of earlier releases and `sql/upgrade/` the upgrade
//! scripts. Released scripts are frozen: an installed database was made by exactly those bytes,
//! and `ALTER EXTENSION ... UPDATE` replays them; a change belongs in a new upgrade script.
//! `sql/checksums.sha256` lists every released and upgrade script with its SHA-256 (in
//! `sha256sum`'s format); a release adds its lines there. That upgrade scripts stay in step with
//! the sources is checked by `tests/upgrade.rs` (objects and function definitions compared with a
//! fresh install).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn sql() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")
}

fn listed() -> BTreeMap<String, String> {
    std::fs::read_to_string(sql().join("checksums.sha256"))
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
    for (name, expected) in listed() {
        let bytes = std::fs::read(sql().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
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
fn every_script_is_in_its_place_and_listed() {
    let listed = listed();
    for (folder, is_upgrade) in [("released", false), ("upgrade", true)] {
        for entry in std::fs::read_dir(sql().join(folder)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                name.starts_with("ae_events--") && name.ends_with(".sql"),
                "sql/{folder}/{name}"
            );
            assert_eq!(
                name.matches("--").count() == 2,
                is_upgrade,
                "sql/{folder}/{name} is in the wrong folder"
            );
            let path = format!("{folder}/{name}");
            assert!(
                listed.contains_key(&path),
                "{path} is not in sql/checksums.sha256 (add it when its release is made)"
            );
        }
    }
    for entry in std::fs::read_dir(sql().join("src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("ae_events--"),
            "sql/src/{name}: versioned scripts go to sql/released/ or sql/upgrade/"
        );
    }
}
