//! The Debian packages of scripts/package.sh, installed on this machine: the previous release's
//! extension package into Debian's PostgreSQL, upgraded to this version's package with
//! `ALTER EXTENSION ae_events UPDATE`, then removed; the relay's package installed and removed.
//!
//! Ignored in the normal run: they change the system's PostgreSQL installation (the files
//! `cargo pgrx install` put there are set aside, and put back at the end, also on failure), so no
//! other test may use it meanwhile. scripts/test.sh runs them after the other tests, once
//! scripts/package.sh has built the packages (this version's and, with `--previous`, the
//! previous release's): `cargo test --test packages -- --ignored`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// dpkg and apt take one lock: the two tests install one after the other.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// A command that changes the system, through sudo unless we are root (as scripts/setup.sh).
fn run_as_root(program: &str, args: &[&str]) -> Output {
    let mut all = vec!["env", "DEBIAN_FRONTEND=noninteractive", program];
    all.extend_from_slice(args);
    if running_as_root() {
        run(all[0], &all[1..])
    } else {
        run("sudo", &all)
    }
}

/// Runs a command that must succeed and returns its standard output.
fn succeed(program: &str, args: &[&str]) -> String {
    expect_success(program, args, run(program, args))
}

fn succeed_as_root(program: &str, args: &[&str]) -> String {
    expect_success(program, args, run_as_root(program, args))
}

fn expect_success(program: &str, args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The PostgreSQL major the packages are for: PG_VERSION, else PG_CONFIG's, else 15.
fn major() -> String {
    if let Ok(version) = std::env::var("PG_VERSION") {
        return version;
    }
    match std::env::var("PG_CONFIG") {
        Ok(pg_config) => succeed(&pg_config, &["--version"])
            .trim()
            .trim_start_matches("PostgreSQL ")
            .split(['.', ' '])
            .next()
            .unwrap()
            .to_string(),
        Err(_) => "15".into(),
    }
}

/// The packages install into Debian's PostgreSQL: the harness must start that server, whatever
/// PG_CONFIG said (a private copy does not read the packages' files).
fn use_debian_server(major: &str) -> String {
    let pg_config = format!("/usr/lib/postgresql/{major}/bin/pg_config");
    assert!(
        Path::new(&pg_config).exists(),
        "no Debian PostgreSQL {major} ({pg_config})"
    );
    // Set while SERIAL is held and before the harness reads it (once, in pg_bin).
    std::env::set_var("PG_CONFIG", &pg_config);
    assert_eq!(pg_bin(), format!("/usr/lib/postgresql/{major}/bin"));
    pg_config
}

fn arch() -> String {
    succeed("dpkg", &["--print-architecture"])
        .trim()
        .to_string()
}

/// A package file built by scripts/package.sh.
fn deb(package: &str, version: &str) -> PathBuf {
    let path = repository_root()
        .join("target/packages")
        .join(format!("{package}_{version}_{}.deb", arch()));
    assert!(
        path.exists(),
        "{} is missing: build it with scripts/package.sh (and --previous for the previous release)",
        path.display()
    );
    path
}

/// The latest release with a frozen install script in sql/released/: the package to upgrade
/// from.
fn previous_version() -> String {
    std::fs::read_dir(repository_root().join("sql/released"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let version = name.strip_prefix("ae_events--")?.strip_suffix(".sql")?;
            let parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
            Some((parts, version.to_string()))
        })
        .max()
        .expect("sql/released/ holds a release")
        .1
}

fn installed_version(package: &str) -> Option<String> {
    let output = run("dpkg-query", &["-W", "-f=${Status} ${Version}", package]);
    let status = String::from_utf8(output.stdout).unwrap();
    status
        .strip_prefix("install ok installed ")
        .map(str::to_string)
}

fn apt_get(args: &[&str]) {
    let mut all = vec!["-y", "-q", "-o", "DPkg::Lock::Timeout=120"];
    all.extend_from_slice(args);
    succeed_as_root("apt-get", &all);
}

fn install(deb: &Path) {
    apt_get(&["install", "--no-install-recommends", deb.to_str().unwrap()]);
}

fn owned_by_a_package(path: &str) -> bool {
    run("dpkg", &["-S", path]).status.success()
}

fn listed_files(package: &str) -> BTreeSet<String> {
    succeed("dpkg", &["-L", package])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The files a server's `cargo pgrx install` (scripts/setup.sh) put there, moved aside while the
/// test installs the packages; on drop (also when the test fails) the package is purged and the
/// files are put back.
struct SetAside {
    package: String,
    backup: PathBuf,
    moved: Vec<(PathBuf, PathBuf)>,
}

impl SetAside {
    fn new(package: &str, files: Vec<PathBuf>) -> SetAside {
        let backup = PathBuf::from(format!(
            "/var/tmp/ae_events_packages_{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&backup).unwrap();
        // Said before anything moves, for the case this process is killed.
        eprintln!(
            "packages: {} files of the installed extension are kept in {} meanwhile",
            files.len(),
            backup.display()
        );
        let mut set_aside = SetAside {
            package: package.to_string(),
            backup,
            moved: Vec::new(),
        };
        for file in files {
            let saved = set_aside.backup.join(file.file_name().unwrap());
            let (from, to) = (file.to_str().unwrap(), saved.to_str().unwrap());
            succeed_as_root("cp", &["-p", from, to]);
            succeed_as_root("rm", &[from]);
            set_aside.moved.push((file, saved));
        }
        set_aside
    }
}

/// Purges a package if dpkg knows it (installed, or removed with its conffiles left).
fn purge(package: &str) {
    if run("dpkg-query", &["-W", package]).status.success() {
        let purge = run_as_root("dpkg", &["--purge", package]);
        if !purge.status.success() {
            eprintln!(
                "packages: dpkg --purge {package} failed: {}",
                String::from_utf8_lossy(&purge.stderr)
            );
        }
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        purge(&self.package);
        let mut all_back = true;
        for (original, saved) in &self.moved {
            let (from, to) = (saved.to_str().unwrap(), original.to_str().unwrap());
            let copy = run_as_root("cp", &["-p", from, to]);
            if !copy.status.success() {
                eprintln!(
                    "packages: cannot put back {to} from {from}: {}",
                    String::from_utf8_lossy(&copy.stderr)
                );
                all_back = false;
            }
        }
        if all_back {
            let _ = std::fs::remove_dir_all(&self.backup);
        }
    }
}

/// Purges the package on drop, also when the test fails.
struct PurgeOnDrop(&'static str);

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        purge(self.0);
    }
}

/// The installed extension's files: the library, the control file and every script.
fn extension_files(pkglibdir: &str, extension_dir: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let library = Path::new(pkglibdir).join("ae_events.so");
    if library.exists() {
        files.push(library);
    }
    for entry in std::fs::read_dir(extension_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name == "ae_events.control"
            || (name.starts_with("ae_events--") && name.ends_with(".sql"))
        {
            files.push(path);
        }
    }
    files
}

#[test]
#[ignore = "installs packages into the system's PostgreSQL: run by scripts/test.sh after the other tests"]
fn extension_package_installs_upgrades_and_is_removed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let major = major();
    let package = format!("postgresql-{major}-ae-events");
    let previous = previous_version();
    let current = env!("CARGO_PKG_VERSION");
    assert_ne!(previous, current, "sql/released/ holds this version");
    let previous_deb = deb(&package, &previous);
    let current_deb = deb(&package, current);
    assert!(
        installed_version(&package).is_none(),
        "{package} is installed: this test would replace it; remove it first"
    );
    let pg_config = use_debian_server(&major);
    let pkglibdir = succeed(&pg_config, &["--pkglibdir"]).trim().to_string();
    let extension_dir = format!("{}/extension", succeed(&pg_config, &["--sharedir"]).trim());
    let _set_aside = SetAside::new(&package, extension_files(&pkglibdir, &extension_dir));
    assert!(extension_files(&pkglibdir, &extension_dir).is_empty());

    // The previous release, as a user of it has it.
    install(&previous_deb);
    assert_eq!(installed_version(&package).as_deref(), Some(&*previous));
    assert!(listed_files(&package).contains(&format!("{extension_dir}/ae_events--{previous}.sql")));
    let cluster = Cluster::start(&[]);
    let database = cluster.empty_database("packages");
    let mut client = cluster.connect(&database);
    load_schema(&mut client, ForeignKeys::Without);
    client.batch_execute("CREATE EXTENSION ae_events").unwrap();
    assert_eq!(extension_version(&mut client), previous);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    let before = outbox_rows(&mut client);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].aggregate_id, 789);
    assert_eq!(before[0].payload, seed_example_payload());

    // The upgrade: the new package, then ALTER EXTENSION in a new session (new library).
    install(&current_deb);
    assert_eq!(installed_version(&package).as_deref(), Some(current));
    drop(client);
    let mut client = cluster.connect(&database);
    client
        .batch_execute("ALTER EXTENSION ae_events UPDATE")
        .unwrap();
    assert_eq!(extension_version(&mut client), current);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    insert_instance(&mut client, 790);
    let after = outbox_rows(&mut client);
    assert_eq!(
        after.iter().map(|row| row.aggregate_id).collect::<Vec<_>>(),
        [789, 790]
    );
    assert_eq!(after[0].event_id, before[0].event_id);
    assert_eq!(after[0].payload, before[0].payload);
    assert_eq!(after[1].subscription_key, "ae.test_instance.created");

    // The previous release's library recorded the seed instance's digest as SHA-256 (32 bytes);
    // this one records a keyed digest (a tag byte and 16) and must still recognize that snapshot as
    // unchanged: no event for an update that changes nothing in it, one for a real change.
    let digest_length = |client: &mut postgres::Client| -> i32 {
        client
            .query_one(
                "SELECT length(snapshot_digest) FROM ae_events.instance_state \
                 WHERE instance_id = 789",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(digest_length(&mut client), 32, "recorded by {previous}");
    client
        .batch_execute("UPDATE ti.instance SET updated_by = updated_by WHERE id = 789")
        .unwrap();
    assert_eq!(outbox_rows(&mut client).len(), 2, "an unchanged snapshot");
    client
        .batch_execute("UPDATE ti.instance SET score = 7 WHERE id = 789")
        .unwrap();
    let updated = outbox_rows(&mut client);
    assert_eq!(updated.len(), 3, "{updated:?}");
    assert_eq!(updated[2].aggregate_id, 789);
    assert_eq!(updated[2].subscription_key, "ae.test_instance.updated");
    assert_eq!(updated[2].snapshot_version, 2);
    assert_eq!(digest_length(&mut client), 17, "recorded by {current}");
    drop(client);

    // Its files: the library, the control file, this version's install script, every upgrade
    // script and earlier release's install script (as in the source tree), the docs.
    let doc = format!("/usr/share/doc/{package}");
    let mut expected = vec![
        format!("{pkglibdir}/ae_events.so"),
        format!("{extension_dir}/ae_events.control"),
        format!("{extension_dir}/ae_events--{current}.sql"),
        format!("{doc}/README.md"),
        format!("{doc}/LICENSE"),
        format!("{doc}/copyright"),
    ];
    for folder in ["sql/upgrade", "sql/released"] {
        for entry in std::fs::read_dir(repository_root().join(folder)).unwrap() {
            let source = entry.unwrap().path();
            let installed = format!(
                "{extension_dir}/{}",
                source.file_name().unwrap().to_str().unwrap()
            );
            assert_eq!(
                std::fs::read(&installed).unwrap_or_default(),
                std::fs::read(&source).unwrap(),
                "{installed} is not {}",
                source.display()
            );
            expected.push(installed);
        }
    }
    assert!(expected.len() > 8, "{expected:?}");
    let listed = listed_files(&package);
    for file in &expected {
        assert!(listed.contains(file), "dpkg -L {package} lacks {file}");
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }
    assert!(
        std::fs::read_to_string(format!("{extension_dir}/ae_events.control"))
            .unwrap()
            .contains(&format!("default_version = '{current}'"))
    );
    assert!(std::fs::read_to_string(format!("{doc}/copyright"))
        .unwrap()
        .contains("MIT"));
    // Nothing of the extension is there but the package's files.
    let present: BTreeSet<String> = extension_files(&pkglibdir, &extension_dir)
        .into_iter()
        .map(|path| path.to_str().unwrap().to_string())
        .collect();
    let expected_set: BTreeSet<String> = expected.iter().cloned().collect();
    assert!(present.is_subset(&expected_set), "{present:?}");

    // Removal leaves nothing behind (no conffiles: there is nothing left to purge either).
    apt_get(&["remove", &package]);
    succeed_as_root("dpkg", &["--purge", &package]);
    assert_eq!(installed_version(&package), None);
    assert!(!run("dpkg-query", &["-W", &package]).status.success());
    for file in &expected {
        assert!(!Path::new(file).exists(), "{file} is still there");
        assert!(!owned_by_a_package(file), "dpkg -S finds {file}");
    }
    assert!(!Path::new(&doc).exists(), "{doc} is still there");
}

/// The `[package]` version of relay/Cargo.toml.
fn relay_version() -> String {
    let manifest = std::fs::read_to_string(repository_root().join("relay/Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("relay/Cargo.toml has a version")
        .to_string()
}

#[test]
#[ignore = "installs a package on this machine: run by scripts/test.sh after the other tests"]
fn relay_package_installs_its_binary_unit_and_config_and_is_removed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let version = relay_version();
    let deb = deb("ae-relay", &version);
    let deb = deb.to_str().unwrap();

    let field = |name: &str| succeed("dpkg-deb", &["-f", deb, name]).trim().to_string();
    assert_eq!(field("Package"), "ae-relay");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), arch());
    assert!(
        field("Depends").contains("libc6 (>="),
        "{}",
        field("Depends")
    );
    assert_eq!(
        succeed("dpkg-deb", &["-I", deb, "conffiles"]).trim(),
        "/etc/ae-relay/ae-relay.toml"
    );
    let contents = succeed("dpkg-deb", &["--contents", deb]);
    for path in [
        "./usr/bin/ae-relay",
        "./lib/systemd/system/ae-relay.service",
        "./etc/ae-relay/ae-relay.toml",
        "./usr/share/doc/ae-relay/copyright",
        "./usr/share/doc/ae-relay/examples/ae-relay.env.example",
    ] {
        assert!(
            contents.lines().any(|line| line.ends_with(path)),
            "{path} is not in the package:\n{contents}"
        );
    }

    assert!(
        installed_version("ae-relay").is_none() && !Path::new("/usr/bin/ae-relay").exists(),
        "ae-relay is installed: this test would replace it; remove it first"
    );
    let _purge = PurgeOnDrop("ae-relay");
    install(Path::new(deb));
    assert_eq!(installed_version("ae-relay"), Some(version.clone()));
    let printed = succeed("/usr/bin/ae-relay", &["--version"]);
    assert_eq!(printed.trim(), format!("ae-relay {version}"));
    let unit = std::fs::read_to_string("/lib/systemd/system/ae-relay.service").unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/ae-relay run --config /etc/ae-relay/ae-relay.toml\n"),
        "{unit}"
    );
    assert_eq!(
        std::fs::read("/etc/ae-relay/ae-relay.toml").unwrap(),
        std::fs::read(repository_root().join("relay/packaging/ae-relay.toml")).unwrap()
    );
    let files = [
        "/usr/bin/ae-relay",
        "/lib/systemd/system/ae-relay.service",
        "/etc/ae-relay/ae-relay.toml",
        "/usr/share/doc/ae-relay/copyright",
    ];
    let listed = listed_files("ae-relay");
    for file in files {
        assert!(listed.contains(file), "dpkg -L ae-relay lacks {file}");
    }

    // Removal keeps the (possibly edited) conffile; purge removes it too.
    apt_get(&["remove", "ae-relay"]);
    assert!(!Path::new("/usr/bin/ae-relay").exists());
    assert!(!Path::new("/lib/systemd/system/ae-relay.service").exists());
    assert!(Path::new("/etc/ae-relay/ae-relay.toml").exists());
    apt_get(&["purge", "ae-relay"]);
    assert!(!run("dpkg-query", &["-W", "ae-relay"]).status.success());
    for file in files {
        assert!(!Path::new(file).exists(), "{file} is still there");
        assert!(!owned_by_a_package(file), "dpkg -S finds {file}");
    }
    assert!(!Path::new("/etc/ae-relay").exists());
}

/// sql/releases.tsv names, for the release the upgrade test starts from, the commit whose
/// Cargo.toml has that version (package.sh --previous builds it), and so for every other line.
#[test]
fn releases_file_names_the_commit_of_each_release() {
    let releases = std::fs::read_to_string(repository_root().join("sql/releases.tsv")).unwrap();
    let mut versions = Vec::new();
    for line in releases.lines().filter(|line| !line.starts_with('#')) {
        let (version, commit) = line.split_once('\t').expect("version<TAB>commit");
        let manifest = succeed(
            "git",
            &[
                "-C",
                repository_root().to_str().unwrap(),
                "show",
                &format!("{commit}:Cargo.toml"),
            ],
        );
        assert!(
            manifest.contains(&format!("\nversion = \"{version}\"\n")),
            "{commit}'s Cargo.toml is not version {version}"
        );
        versions.push(version.to_string());
    }
    assert!(
        versions.contains(&previous_version()),
        "sql/releases.tsv lacks {}",
        previous_version()
    );
}
