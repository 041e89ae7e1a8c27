//! The side-by-side benchmark behind `scripts/bench.sh`: one throwaway cluster, one run, ratios.
//!
//! Variants, each in its own copy of one template database (same rows, same instances):
//! - bare: the application's insert, no trigger;
//! - floor: the bare insert plus writing the same, precomputed outbox rows in the same
//!   transaction (what any outbox costs at least);
//! - ae_events: notify=full with the default payload budget, without a budget, notify=off;
//! - (single-row only) the bare insert plus one empty NOTIFY: the ceiling for any design that
//!   notifies per transaction;
//! - PL/pgSQL: a hand-written deferred trigger building the same payload with jsonb_build_object
//!   (examples/bench/plpgsql_trigger.sql). Its payloads are checked equal to ae_events'.
//!
//! Workloads: a bulk INSERT ... SELECT in one transaction, pgbench single-row transactions with 2
//! clients, one transaction of 10k / 50k / 100k instances (time and the backend's peak
//! memory), one transaction updating 10,000 measurement attributes of 2,000 instances (updated
//! events; the PL/pgSQL comparator is a statement trigger), and one reference-data change that
//! fans out to 50,000 instances (time and peak memory), one instance whose measurement has 10,000
//! and 100,000 attributes, with and without a `*` payload rule (time and peak memory: both
//! linear in the attributes). `--smoke` runs everything at a tiny size (part of the test command, so the benchmark
//! cannot rot); the payload check fails the run in either mode.

#[path = "../../tests/common/mod.rs"]
mod common;
mod console;
mod fanout_load;

use common::*;
use postgres::Client;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DATA: &str = include_str!("data.sql");
const PLPGSQL_TRIGGER: &str = include_str!("plpgsql_trigger.sql");
const HASURA_TRIGGER: &str = include_str!("hasura_trigger.sql");

struct Sizes {
    bulk: i64,
    rounds: usize,
    pgbench_seconds: u32,
    scale: Vec<i64>,
    /// Workload 4: instances whose 5 attributes each one transaction updates.
    updated_instances: i64,
    /// Instances a reference-data change reaches.
    fan_out: i64,
    /// Attributes of the one instance of the attributes workload (and a tenth of it).
    attributes: i64,
    /// Seconds the concurrency workload runs per variant.
    concurrency_seconds: u64,
    /// Instances of the assessment renamed under a creation load (`fanout_load.rs`).
    fan_out_under_load: i64,
}

impl Sizes {
    fn from_args() -> (Sizes, bool) {
        let smoke = std::env::args().any(|arg| arg == "--smoke");
        let sizes = if smoke {
            Sizes {
                bulk: 200,
                rounds: 1,
                pgbench_seconds: 2,
                scale: vec![100, 500, 1000],
                updated_instances: 20,
                fan_out: 300,
                attributes: 2_000,
                concurrency_seconds: 2,
                fan_out_under_load: 500,
            }
        } else {
            Sizes {
                bulk: 20_000,
                rounds: 5,
                pgbench_seconds: 30,
                // (single-row: 5 interleaved rounds of 6 s)
                scale: vec![10_000, 50_000, 100_000],
                updated_instances: 2_000,
                fan_out: 50_000,
                attributes: 100_000,
                concurrency_seconds: 20,
                fan_out_under_load: 100_000,
            }
        };
        (sizes, smoke)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    /// The bare insert plus one small NOTIFY per transaction (single-row workload only).
    BareWithNotify,
    Floor,
    /// The floor plus one pg_notify of the precomputed payload (single-row workload only).
    FloorWithNotify,
    /// What many users run instead: a row trigger writing row_to_json(NEW) of the instance alone
    /// (no joins) into an event table, Hasura-style.
    Hasura,
    AeEventsFull,
    AeEventsFullUnlimited,
    AeEventsOff,
    /// The default: reference wake-ups, one per transaction and none within notify_interval.
    AeEventsReference,
    PlPgSql,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare insert",
            Variant::BareWithNotify => "bare insert + one empty NOTIFY",
            Variant::Floor => "floor (bare + precomputed outbox rows)",
            Variant::FloorWithNotify => "floor + one pg_notify of the payload",
            Variant::Hasura => "Hasura-style trigger (row_to_json(NEW), no joins)",
            Variant::AeEventsFull => "ae_events, notify=full (default 1 MB payload budget)",
            Variant::AeEventsFullUnlimited => "ae_events, notify=full, no payload budget",
            Variant::AeEventsOff => "ae_events, notify=off",
            Variant::AeEventsReference => "ae_events, notify=reference (the default)",
            Variant::PlPgSql => "PL/pgSQL trigger (jsonb_build_object)",
        }
    }
}

fn instances_sql(first: i64, last: i64) -> String {
    format!(
        "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
             catalog_assessment_id, measurement_id, session_instance_id,
             workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
         SELECT g, 'ext_ti_' || g, NULL, CASE WHEN g % 4 = 0 THEN NULL ELSE (g % 1000) / 10.0 END,
                'in_progress', g, 1 + g % 20, g, 5000000 + g, 6000000 + g,
                timestamptz '2024-03-01 00:00:00Z' + g * interval '1 second', 77,
                timestamptz '2024-03-01 00:00:00Z' + g * interval '1 second', 77
           FROM generate_series({first}, {last}) AS g"
    )
}

const FLOOR_OUTBOX_ROWS: &str = "
INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type, aggregate_id,
                              snapshot_version, payload, occurred_at, txid)
SELECT gen_random_uuid(), 'ae.test_instance.created', 'ae_test_instance_created', 'test_instance',
       p.id, 1, p.payload, clock_timestamp(), pg_current_xact_id()
  FROM bench.precomputed AS p
 WHERE p.id BETWEEN $FIRST AND $LAST
 ORDER BY p.id";

struct Bench {
    cluster: Cluster,
    sizes: Sizes,
}

impl Bench {
    fn connect(&self, database: &str) -> Client {
        self.cluster.connect(database)
    }

    fn clone_database(&self, template: &str, name: &str) -> String {
        self.connect("postgres")
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY"
            ))
            .unwrap();
        name.to_owned()
    }

    fn database_of(&self, variant: Variant) -> &'static str {
        match variant {
            Variant::Bare | Variant::BareWithNotify => "bench_bare",
            Variant::Floor | Variant::FloorWithNotify => "bench_floor",
            Variant::Hasura => "bench_hasura",
            Variant::AeEventsFull
            | Variant::AeEventsFullUnlimited
            | Variant::AeEventsOff
            | Variant::AeEventsReference => "bench_ae_events",
            Variant::PlPgSql => "bench_plpgsql",
        }
    }

    fn session(&self, variant: Variant) -> Client {
        let mut client = self.connect(self.database_of(variant));
        let setting = match variant {
            Variant::AeEventsOff => "SET ae_events.notify = off",
            Variant::AeEventsReference => "SET ae_events.notify = reference",
            Variant::AeEventsFullUnlimited => "SET ae_events.notify_payload_budget = -1",
            _ => "",
        };
        if !setting.is_empty() {
            client
                .batch_execute(&format!("LOAD 'ae_events'; {setting}"))
                .unwrap();
        }
        client
    }

    /// Empty the instance and outbox tables and flush dirty pages (PostgreSQL's and the
    /// kernel's), so that rounds start alike.
    fn reset(&self, client: &mut Client, variant: Variant) {
        let tables = if matches!(variant, Variant::Bare | Variant::BareWithNotify) {
            "ti.instance"
        } else if variant == Variant::Hasura {
            "ti.instance, bench.event_log"
        } else {
            "ti.instance, ae_events.outbox, ae_events.instance_state"
        };
        client
            .batch_execute(&format!("TRUNCATE {tables}; CHECKPOINT"))
            .unwrap();
        // Let the kernel write the checkpoint's pages now, not during the next timed run.
        let _ = Command::new("sync").status();
    }

    /// One transaction inserting instances `first..=last`; its wall-clock time in seconds.
    fn timed_insert(&self, client: &mut Client, variant: Variant, first: i64, last: i64) -> f64 {
        self.timed_insert_with_wal(client, variant, first, last).0
    }

    /// The same, with the WAL it wrote (bytes, from the WAL insert position before and after).
    fn timed_insert_with_wal(
        &self,
        client: &mut Client,
        variant: Variant,
        first: i64,
        last: i64,
    ) -> (f64, f64) {
        let wal_before = wal_position(client);
        let mut sql = format!("BEGIN; {};", instances_sql(first, last));
        if variant == Variant::Floor {
            sql.push_str(
                &FLOOR_OUTBOX_ROWS
                    .replace("$FIRST", &first.to_string())
                    .replace("$LAST", &last.to_string()),
            );
            sql.push(';');
        }
        sql.push_str("COMMIT");
        let started = Instant::now();
        client.batch_execute(&sql).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        (seconds, wal_position(client) - wal_before)
    }
}

/// The cluster's WAL insert position, in bytes (only differences mean anything).
fn wal_position(client: &mut Client) -> f64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8",
            &[],
        )
        .unwrap()
        .get(0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let (sizes, smoke) = Sizes::from_args();
    let largest = sizes.bulk.max(*sizes.scale.iter().max().unwrap());
    println!("Starting a throwaway PostgreSQL 15 cluster under /tmp ...");
    // Durable commits, as in production: the test harness's defaults turn fsync off.
    let cluster = Cluster::start(&[
        "fsync = on",
        "synchronous_commit = on",
        "full_page_writes = on",
        "shared_buffers = 1GB",
        "max_wal_size = 16GB",
        "checkpoint_timeout = 1h",
        "autovacuum = off",
    ]);
    let bench = Bench { cluster, sizes };

    println!("Loading {largest} candidates and measurements (5 attributes each) ...");
    let template = "bench_template";
    {
        let mut admin = bench.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {template}"))
            .unwrap();
        let mut client = bench.connect(template);
        load_schema(&mut client, ForeignKeys::With);
        client
            .batch_execute(&DATA.replace("@N@", &largest.to_string()))
            .unwrap();
        client
            .batch_execute("CREATE SEQUENCE public.bench_instance_id START 100000001")
            .unwrap();
    }
    for variant in [
        Variant::Bare,
        Variant::Floor,
        Variant::Hasura,
        Variant::AeEventsFull,
        Variant::PlPgSql,
    ] {
        bench.clone_database(template, bench.database_of(variant));
    }
    bench
        .connect("bench_hasura")
        .batch_execute(HASURA_TRIGGER)
        .unwrap();
    {
        let mut client = bench.connect("bench_ae_events");
        // The notify=full variants: the database's default (0.5.0's default is reference).
        client
            .batch_execute(
                "CREATE EXTENSION ae_events;
                 ALTER DATABASE bench_ae_events SET ae_events.notify = full",
            )
            .unwrap();
        let mut client = bench.connect("bench_plpgsql");
        client
            .batch_execute(&format!(
                "CREATE EXTENSION ae_events; SELECT ae_events.detach(); {PLPGSQL_TRIGGER};
                 CREATE CONSTRAINT TRIGGER bench_emit_created AFTER INSERT ON ti.instance
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench.emit_created();
                 CREATE TRIGGER bench_emit_updated AFTER UPDATE ON tcf.measurement_attribute
                 REFERENCING NEW TABLE AS changed
                 FOR EACH STATEMENT EXECUTE FUNCTION bench.emit_updated_attributes()"
            ))
            .unwrap();
        // The floor's rows: the same payloads, computed ahead of the timed transaction.
        let mut client = bench.connect("bench_floor");
        client
            .batch_execute(&format!(
                "CREATE EXTENSION ae_events; SELECT ae_events.detach(); {PLPGSQL_TRIGGER};
                 {};
                 CREATE TABLE bench.precomputed (id bigint, payload jsonb);
                 -- Stored uncompressed, so that the floor pays the outbox's compression as we do.
                 ALTER TABLE bench.precomputed ALTER COLUMN payload SET STORAGE PLAIN;
                 INSERT INTO bench.precomputed SELECT i.id, bench.payload(i.id) FROM ti.instance AS i;
                 CREATE UNIQUE INDEX ON bench.precomputed (id);
                 TRUNCATE ti.instance",
                instances_sql(1, bench.sizes.bulk)
            ))
            .unwrap();
        client.batch_execute("VACUUM ANALYZE").unwrap();
    }
    let machine = machine_description(&mut bench.connect("postgres"));

    // `--only bulk|single-row|scale|updates|concurrency|attributes|fanout-load|console` (comma-separated) runs one workload (the bulk one always checks payloads).
    let only = std::env::args().skip_while(|arg| arg != "--only").nth(1);
    let runs = |workload: &str| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|wanted| wanted == workload))
    };
    let (bulk, payload_check) = if runs("bulk") {
        let bulk = bulk_workload(&bench);
        (Some(bulk), Some(check_payloads(&bench)))
    } else {
        (None, None)
    };
    let single_row = if runs("single-row") {
        single_row_workload(&bench)
    } else {
        Vec::new()
    };
    let scale = if runs("scale") {
        scale_workload(&bench)
    } else {
        Vec::new()
    };
    let updates = runs("updates").then(|| update_workload(&bench));
    let concurrency = if runs("concurrency") {
        concurrency_workload(&bench)
    } else {
        Vec::new()
    };
    let attributes = if runs("attributes") {
        attributes_workload(&bench)
    } else {
        Vec::new()
    };
    let fanout_load = if runs("fanout-load") {
        fanout_load::fanout_under_load(&bench)
    } else {
        Vec::new()
    };
    let console = runs("console").then(|| console::console_workload(&bench));

    println!("\n## Results\n\n{machine}\n");
    if let (Some(bulk), Some(check)) = (&bulk, &payload_check) {
        print_bulk(&bench, bulk, check);
    }
    if !single_row.is_empty() {
        print_single_row(&bench, &single_row);
    }
    if !scale.is_empty() {
        print_scale(&scale);
    }
    if let Some(updates) = &updates {
        print_updates(&bench, updates);
    }
    if !concurrency.is_empty() {
        print_concurrency(&bench, &concurrency);
    }
    if !attributes.is_empty() {
        print_attributes(&attributes);
    }
    fanout_load::print(&fanout_load);
    console::print(&console);
    if smoke {
        println!("\n(smoke run: sizes too small for the figures to mean anything)");
    }
}

struct PayloadCheck {
    events: i64,
    average_bytes: f64,
}

/// The PL/pgSQL payloads (and the floor's precomputed ones) must equal ae_events' on the same
/// rows, or the comparison is not honest: fail the run otherwise.
fn check_payloads(bench: &Bench) -> PayloadCheck {
    const DIGEST: &str = "SELECT count(*), coalesce(md5(string_agg(payload::text, E'\\n' ORDER BY aggregate_id)), ''),
                                 coalesce(avg(octet_length(payload::text)), 0)::float8
                            FROM ae_events.outbox";
    let digest = |database: &str, sql: &str| {
        let row = bench.connect(database).query_one(sql, &[]).unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, f64>(2),
        )
    };
    let ours = digest("bench_ae_events", DIGEST);
    let plpgsql = digest("bench_plpgsql", DIGEST);
    let floor = digest(
        "bench_floor",
        &format!(
            "SELECT count(*), md5(string_agg(payload::text, E'\\n' ORDER BY id)), 0::float8
               FROM bench.precomputed WHERE id <= {}",
            bench.sizes.bulk
        ),
    );
    if ours.0 != bench.sizes.bulk || ours.1 != plpgsql.1 || ours.1 != floor.1 {
        let mut ae = bench.connect("bench_ae_events");
        let mut pl = bench.connect("bench_plpgsql");
        let first = |client: &mut Client| -> Vec<(i64, String)> {
            client
                .query(
                    "SELECT aggregate_id, payload::text FROM ae_events.outbox ORDER BY aggregate_id LIMIT 1000",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect()
        };
        let (ours_rows, theirs_rows) = (first(&mut ae), first(&mut pl));
        if let Some((a, b)) = ours_rows.iter().zip(&theirs_rows).find(|(a, b)| a != b) {
            eprintln!("ae_events: {a:?}\nPL/pgSQL:  {b:?}");
        }
        eprintln!(
            "payload check FAILED: ae_events {} events, PL/pgSQL {}, floor {}; digests {} / {} / {}",
            ours.0, plpgsql.0, floor.0, ours.1, plpgsql.1, floor.1
        );
        std::process::exit(1);
    }
    println!(
        "Payload check: the {} PL/pgSQL payloads and the floor's rows equal ae_events' (md5 {}).",
        ours.0, ours.1
    );
    PayloadCheck {
        events: ours.0,
        average_bytes: ours.2,
    }
}

/// Per variant: the median time and the median WAL bytes per instance.
struct BulkResults {
    times: Vec<(Variant, f64)>,
    wal_per_event: Vec<(Variant, f64)>,
}

fn bulk_workload(bench: &Bench) -> BulkResults {
    let variants = [
        Variant::Bare,
        Variant::Floor,
        Variant::Hasura,
        Variant::AeEventsFull,
        Variant::AeEventsFullUnlimited,
        Variant::AeEventsReference,
        Variant::AeEventsOff,
        Variant::PlPgSql,
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut wal: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 1..=bench.sizes.rounds {
        for (index, &variant) in variants.iter().enumerate() {
            let mut client = bench.session(variant);
            bench.reset(&mut client, variant);
            let (seconds, wal_bytes) =
                bench.timed_insert_with_wal(&mut client, variant, 1, bench.sizes.bulk);
            let per_event = wal_bytes / bench.sizes.bulk as f64;
            println!(
                "bulk round {round}: {:<50} {seconds:>8.3} s {per_event:>8.0} WAL bytes per instance",
                variant.label()
            );
            times[index].push(seconds);
            wal[index].push(per_event);
        }
    }
    let medians = |values: Vec<Vec<f64>>| -> Vec<(Variant, f64)> {
        variants
            .iter()
            .zip(values)
            .map(|(&variant, values)| (variant, median(values)))
            .collect()
    };
    BulkResults {
        times: medians(times),
        wal_per_event: medians(wal),
    }
}

/// pgbench, 2 clients, one instance per transaction; tps and WAL bytes per transaction per variant.
fn single_row_workload(bench: &Bench) -> Vec<(Variant, f64, f64)> {
    let insert = format!(
        "\\set n random(1, {})\n\
         INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id, \
         catalog_assessment_id, measurement_id, session_instance_id, workflow_candidate_step_id, \
         created_at, created_by, updated_at, updated_by) \
         VALUES (nextval('public.bench_instance_id'), 'ext', NULL, 70.5, 'in_progress', :n, \
         1 + :n % 20, :n, NULL, NULL, now(), 77, now(), 77);\n",
        bench.sizes.bulk
    );
    let script = bench.cluster.data_dir.join("single_row.sql");
    std::fs::write(&script, &insert).unwrap();
    // PostgreSQL serializes the commits of transactions that notified (a cluster-wide lock held
    // through the commit's WAL flush): this variant shows that ceiling for any design that notifies.
    let script_with_notify = bench.cluster.data_dir.join("single_row_notify.sql");
    std::fs::write(
        &script_with_notify,
        format!(
            "BEGIN;\n{}SELECT pg_notify('bench', '');\nCOMMIT;\n",
            insert
        ),
    )
    .unwrap();
    // The floors: the same insert, an outbox row with a payload computed beforehand (same table,
    // same indexes as ae_events'), and, for the second, one pg_notify of that payload.
    let floor_statements = format!(
        "BEGIN;\n{insert}\
         INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type, \
         aggregate_id, snapshot_version, payload, occurred_at, txid) \
         SELECT gen_random_uuid(), 'ae.test_instance.created', 'ae_test_instance_created', \
         'test_instance', currval('public.bench_instance_id'), 1, p.payload, clock_timestamp(), \
         pg_current_xact_id() FROM bench.precomputed AS p WHERE p.id = :n;\n"
    );
    let script_floor = bench.cluster.data_dir.join("single_row_floor.sql");
    std::fs::write(&script_floor, format!("{floor_statements}COMMIT;\n")).unwrap();
    let script_floor_notify = bench.cluster.data_dir.join("single_row_floor_notify.sql");
    std::fs::write(
        &script_floor_notify,
        format!(
            "{floor_statements}SELECT pg_notify('ae_events', p.payload::text) \
             FROM bench.precomputed AS p WHERE p.id = :n;\nCOMMIT;\n"
        ),
    )
    .unwrap();
    // The variants take turns (rounds of equal length), so that drift in the machine's fsync
    // latency, which dominates single-row commits, falls on all of them alike.
    let variants = [
        Variant::Bare,
        Variant::BareWithNotify,
        Variant::Floor,
        Variant::FloorWithNotify,
        Variant::Hasura,
        Variant::AeEventsFull,
        Variant::AeEventsReference,
        Variant::AeEventsOff,
        Variant::PlPgSql,
    ];
    for variant in variants {
        let mut client = bench.session(variant);
        bench.reset(&mut client, variant);
    }
    let rounds = bench.sizes.rounds as u32;
    let seconds = (bench.sizes.pgbench_seconds / rounds).max(1);
    let mut sums = vec![0.0; variants.len()];
    let mut wal = vec![(0.0, 0u64); variants.len()];
    let mut client = bench.connect("postgres");
    for round in 1..=rounds {
        for (index, &variant) in variants.iter().enumerate() {
            let chosen = match variant {
                Variant::BareWithNotify => &script_with_notify,
                Variant::Floor => &script_floor,
                Variant::FloorWithNotify => &script_floor_notify,
                _ => &script,
            };
            let wal_before = wal_position(&mut client);
            let (tps, transactions) = pgbench(bench, chosen, variant, seconds);
            wal[index].0 += wal_position(&mut client) - wal_before;
            wal[index].1 += transactions;
            println!(
                "single-row round {round}: {:<50} {tps:>8.0} tps",
                variant.label()
            );
            sums[index] += tps;
        }
    }
    let results: Vec<(Variant, f64, f64)> = variants
        .iter()
        .zip(sums)
        .zip(wal)
        .map(|((&variant, sum), (bytes, transactions))| {
            (
                variant,
                sum / f64::from(rounds),
                bytes / transactions.max(1) as f64,
            )
        })
        .collect();
    // Every committed transaction has its event (nothing lost under concurrency).
    let mut client = bench.connect("bench_ae_events");
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM ti.instance), (SELECT count(*) FROM ae_events.outbox)",
            &[],
        )
        .unwrap();
    let (instances, events): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        instances, events,
        "single-row: every instance has its event"
    );
    results
}

/// One pgbench run of `seconds` against the variant's database: its tps and transactions.
fn pgbench(bench: &Bench, script: &std::path::Path, variant: Variant, seconds: u32) -> (f64, u64) {
    let mut command = Command::new(format!("{}/pgbench", pg_bin()));
    if variant == Variant::AeEventsOff {
        command.env("PGOPTIONS", "-c ae_events.notify=off");
    }
    if variant == Variant::AeEventsReference {
        command.env("PGOPTIONS", "-c ae_events.notify=reference");
    }
    let output = command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &bench.cluster.port.to_string(),
            "-U",
            "postgres",
            "-n",
            "-c",
            "2",
            "-j",
            "2",
            "-M",
            "prepared",
            "-T",
            &seconds.to_string(),
            "-f",
            script.to_str().unwrap(),
            bench.database_of(variant),
        ])
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tps = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no tps in pgbench output: {stdout}"));
    let transactions = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("number of transactions actually processed: ")?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no transaction count in pgbench output: {stdout}"));
    (tps, transactions)
}

struct ScalePoint {
    instances: i64,
    bare_seconds: f64,
    seconds: f64,
    peak_memory_bytes: u64,
    /// With notify=off: without PostgreSQL's queue of the transaction's notifications.
    peak_memory_without_notify_bytes: u64,
}

/// One transaction of n instances with ae_events: time and the backend's peak private memory
/// (RssAnon sampled from /proc every 2 ms, minus its value before the transaction).
fn scale_workload(bench: &Bench) -> Vec<ScalePoint> {
    let mut points = Vec::new();
    for &instances in &bench.sizes.scale {
        let mut bare = bench.session(Variant::Bare);
        bench.reset(&mut bare, Variant::Bare);
        let bare_seconds = bench.timed_insert(&mut bare, Variant::Bare, 1, instances);

        let (seconds, peak) = measure_transaction(bench, Variant::AeEventsFull, instances);
        let (_, peak_without_notify) = measure_transaction(bench, Variant::AeEventsOff, instances);
        println!(
            "scale {instances:>7}: bare {bare_seconds:.3} s, ae_events {seconds:.3} s, peak +{:.1} MiB (notify=off +{:.1} MiB)",
            peak as f64 / 1048576.0,
            peak_without_notify as f64 / 1048576.0
        );
        points.push(ScalePoint {
            instances,
            bare_seconds,
            seconds,
            peak_memory_bytes: peak,
            peak_memory_without_notify_bytes: peak_without_notify,
        });
    }
    points
}

/// Time one transaction of `instances` and the growth of the backend's private memory.
fn measure_transaction(bench: &Bench, variant: Variant, instances: i64) -> (f64, u64) {
    let mut client = bench.session(variant);
    bench.reset(&mut client, variant);
    let (seconds, peak) = with_peak_memory(&mut client, |client| {
        bench.timed_insert(client, variant, 1, instances)
    });
    let row = client
        .query_one("SELECT count(*) FROM ae_events.outbox", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), instances, "scale: one event each");
    (seconds, peak)
}

/// Run `work` on the session and sample its backend's private memory (RssAnon from /proc every
/// 2 ms): the result and the peak growth over the value before.
fn with_peak_memory<T>(client: &mut Client, work: impl FnOnce(&mut Client) -> T) -> (T, u64) {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let before = rss_anon_bytes(pid);
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = Arc::clone(&running);
        std::thread::spawn(move || {
            let mut peak = 0;
            while running.load(Ordering::Relaxed) {
                peak = peak.max(rss_anon_bytes(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let result = work(client);
    running.store(false, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    (result, peak.saturating_sub(before))
}

struct UpdateResults {
    /// Workload 4: median seconds per variant.
    attributes: Vec<(Variant, f64)>,
    /// Workload 4: median WAL bytes per updated instance, per variant.
    attributes_wal: Vec<(Variant, f64)>,
    /// The fan-out: seconds and the backend's peak memory growth per variant.
    fan_out: Vec<(Variant, f64, u64)>,
}

/// The updated events in the session's database (0 where there is no outbox: bare).
fn updated_events(client: &mut Client) -> i64 {
    let has_outbox: bool = client
        .query_one("SELECT to_regclass('ae_events.outbox') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    if !has_outbox {
        return 0;
    }
    client
        .query_one(
            "SELECT count(*) FROM ae_events.outbox WHERE subscription_key = 'ae.test_instance.updated'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Workload 4 (one transaction updating the 5 attributes of each of N instances) and the
/// fan-out (one reference-data change reaching every instance, ae.test_instance.updated for each).
fn update_workload(bench: &Bench) -> UpdateResults {
    let sizes = &bench.sizes;
    for (variant, instances) in [
        (Variant::Bare, sizes.fan_out),
        (Variant::AeEventsFull, sizes.fan_out),
        (Variant::PlPgSql, sizes.updated_instances),
    ] {
        let mut client = bench.session(variant);
        bench.reset(&mut client, variant);
        client.batch_execute(&instances_sql(1, instances)).unwrap();
    }
    let mut client = bench.connect("bench_ae_events");
    client
        .batch_execute(
            "UPDATE ae_events.bubble_up SET enabled = true WHERE source_table = 'tcf.skill'",
        )
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").unwrap();

    let update_attributes = format!(
        "UPDATE tcf.measurement_attribute SET numerical_score = numerical_score + 1,
                updated_at = updated_at + interval '1 second'
          WHERE measurement_id BETWEEN 1 AND {}",
        sizes.updated_instances
    );
    let variants = [
        Variant::Bare,
        Variant::AeEventsFull,
        Variant::AeEventsOff,
        Variant::PlPgSql,
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut wal: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 1..=sizes.rounds {
        for (index, &variant) in variants.iter().enumerate() {
            let mut client = bench.session(variant);
            if variant != Variant::Bare && variant != Variant::PlPgSql {
                // Written in the update's own transaction, as the comparators do: its 2,000
                // instances are over the default inline limit, which would defer them (the
                // deferred path is the fan-out-under-load workload's).
                client
                    .batch_execute("SET ae_events.fanout_inline_limit = 2147483647")
                    .unwrap();
            }
            client.batch_execute("CHECKPOINT").unwrap();
            let _ = Command::new("sync").status();
            let before = updated_events(&mut client);
            let wal_before = wal_position(&mut client);
            let started = Instant::now();
            client.batch_execute(&update_attributes).unwrap();
            let seconds = started.elapsed().as_secs_f64();
            wal[index]
                .push((wal_position(&mut client) - wal_before) / sizes.updated_instances as f64);
            if variant != Variant::Bare {
                assert_eq!(
                    updated_events(&mut client) - before,
                    sizes.updated_instances,
                    "{}: one updated event per instance",
                    variant.label()
                );
            }
            println!(
                "updates round {round}: {:<40} {seconds:>8.3} s",
                label(variant)
            );
            times[index].push(seconds);
        }
    }
    let attributes = variants
        .iter()
        .zip(times)
        .map(|(&variant, seconds)| (variant, median(seconds)))
        .collect();
    let attributes_wal = variants
        .iter()
        .zip(wal)
        .map(|(&variant, bytes)| (variant, median(bytes)))
        .collect();

    let mut fan_out = Vec::new();
    for (round, variant) in [Variant::Bare, Variant::AeEventsFull, Variant::AeEventsOff]
        .into_iter()
        .enumerate()
    {
        let mut client = bench.session(variant);
        if variant != Variant::Bare {
            // The cost of a fan-out written in the change's own transaction (larger ones are
            // deferred by default: the fan-out-under-load workload).
            client
                .batch_execute("SET ae_events.fanout_inline_limit = 2147483647")
                .unwrap();
        }
        client.batch_execute("CHECKPOINT").unwrap();
        let _ = Command::new("sync").status();
        let before = updated_events(&mut client);
        let (seconds, peak) = with_peak_memory(&mut client, |client| {
            let started = Instant::now();
            client
                .batch_execute(&format!(
                    "UPDATE tcf.skill SET name = 'Skill 2, renamed {round}' WHERE id = 2"
                ))
                .unwrap();
            started.elapsed().as_secs_f64()
        });
        if variant != Variant::Bare {
            assert_eq!(
                updated_events(&mut client) - before,
                sizes.fan_out,
                "fan-out: one updated event per instance"
            );
        }
        println!(
            "fan-out {}: {:<40} {seconds:>8.3} s, peak +{:.1} MiB",
            sizes.fan_out,
            label(variant),
            peak as f64 / 1048576.0
        );
        fan_out.push((variant, seconds, peak));
    }
    UpdateResults {
        attributes,
        attributes_wal,
        fan_out,
    }
}

fn rss_anon_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kib = line.strip_prefix("RssAnon:")?.trim().strip_suffix("kB")?;
                kib.trim().parse::<u64>().ok()
            })
        })
        .unwrap_or(0)
        * 1024
}

fn machine_description(client: &mut Client) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            let kib = meminfo.lines().next()?.split_whitespace().nth(1)?;
            kib.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1048576.0);
    let version: String = client
        .query_one("SELECT current_setting('server_version')", &[])
        .unwrap()
        .get(0);
    format!(
        "Machine: {model}, {cores} cores, {memory_gib:.0} GiB. PostgreSQL {version}, throwaway \
         cluster (fsync=on, synchronous_commit=on, shared_buffers=1GB), no listener."
    )
}

/// The figure measured for `wanted` (NaN if that variant did not run).
fn figure(results: &[(Variant, f64)], wanted: Variant) -> f64 {
    results
        .iter()
        .find(|(variant, _)| *variant == wanted)
        .map_or(f64::NAN, |(_, value)| *value)
}

fn print_bulk(bench: &Bench, results: &BulkResults, check: &PayloadCheck) {
    let bulk = &results.times;
    let time = |wanted: Variant| figure(bulk, wanted);
    let (bare, floor) = (time(Variant::Bare), time(Variant::Floor));
    println!(
        "### Bulk: one INSERT ... SELECT of {} instances in one transaction (median of {} rounds; \
         payload {:.0} bytes on average, {} payloads checked equal)\n",
        bench.sizes.bulk, bench.sizes.rounds, check.average_bytes, check.events
    );
    println!(
        "| variant | seconds | x bare | x floor | WAL bytes per instance |\n|---|---:|---:|---:|---:|"
    );
    for (variant, seconds) in bulk {
        println!(
            "| {} | {seconds:.3} | {:.2} | {:.2} | {:.0} |",
            variant.label(),
            seconds / bare,
            seconds / floor,
            figure(&results.wal_per_event, *variant)
        );
    }
    let ours = time(Variant::AeEventsFull);
    println!(
        "\nae_events (notify=reference, the default) / floor = {:.2} (target <= 1.5); \
         notify=full / floor = {:.2}; notify=off / floor = {:.2}; \
         PL/pgSQL / ae_events = {:.1} (target >= 10); ae_events / Hasura-style = {:.2}\n",
        time(Variant::AeEventsReference) / floor,
        ours / floor,
        time(Variant::AeEventsOff) / floor,
        time(Variant::PlPgSql) / ours,
        ours / time(Variant::Hasura)
    );
}

fn print_single_row(bench: &Bench, results: &[(Variant, f64, f64)]) {
    let tps = |wanted: Variant| {
        results
            .iter()
            .find(|(variant, _, _)| *variant == wanted)
            .map_or(f64::NAN, |(_, tps, _)| *tps)
    };
    println!(
        "### Single-row transactions: pgbench, 2 clients, {} s per variant ({} interleaved rounds, mean tps)\n",
        bench.sizes.pgbench_seconds, bench.sizes.rounds
    );
    println!(
        "| variant | tps | of bare | x floor | x floor + pg_notify | WAL bytes per transaction |\n|---|---:|---:|---:|---:|---:|"
    );
    let (bare, floor, floor_notify) = (
        tps(Variant::Bare),
        tps(Variant::Floor),
        tps(Variant::FloorWithNotify),
    );
    for (variant, value, wal) in results {
        println!(
            "| {} | {value:.0} | {:.0}% | {:.2} | {:.2} | {wal:.0} |",
            variant.label(),
            100.0 * value / bare,
            value / floor,
            value / floor_notify
        );
    }
    let ours = tps(Variant::AeEventsFull);
    println!(
        "\nae_events notify=reference (the default) / (floor + pg_notify) = {:.2} (target >= 1.0); \
         notify=full / (floor + pg_notify) = {:.2} (target >= 0.95); \
         notify=off / floor = {:.2} (target >= 0.9); ae_events / PL/pgSQL = {:.1}x; \
         ae_events notify=off / Hasura-style = {:.2}\n",
        tps(Variant::AeEventsReference) / floor_notify,
        ours / floor_notify,
        tps(Variant::AeEventsOff) / floor,
        ours / tps(Variant::PlPgSql),
        tps(Variant::AeEventsOff) / tps(Variant::Hasura)
    );
}

fn print_scale(points: &[ScalePoint]) {
    println!("### Scale: one transaction, ae_events (notify=full)\n");
    println!(
        "| instances | bare s | ae_events s | ae_events us per instance | backend peak memory (MiB) | same, notify=off (MiB) |\n\
         |---:|---:|---:|---:|---:|---:|"
    );
    for point in points {
        println!(
            "| {} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} |",
            point.instances,
            point.bare_seconds,
            point.seconds,
            point.seconds * 1e6 / point.instances as f64,
            point.peak_memory_bytes as f64 / 1048576.0,
            point.peak_memory_without_notify_bytes as f64 / 1048576.0
        );
    }
}

/// Variant names in the update workloads (the bare variant updates, it does not insert).
fn label(variant: Variant) -> &'static str {
    match variant {
        Variant::Bare => "bare update (no trigger)",
        _ => variant.label(),
    }
}

fn print_updates(bench: &Bench, updates: &UpdateResults) {
    let sizes = &bench.sizes;
    println!(
        "### Updates: one transaction updating the 5 attributes of each of {} instances ({} rows; median of {} rounds)\n",
        sizes.updated_instances,
        sizes.updated_instances * 5,
        sizes.rounds
    );
    println!(
        "| variant | seconds | x bare | us per instance | WAL bytes per instance |\n|---|---:|---:|---:|---:|"
    );
    let bare = figure(&updates.attributes, Variant::Bare);
    for (variant, seconds) in &updates.attributes {
        println!(
            "| {} | {seconds:.3} | {:.2} | {:.1} | {:.0} |",
            label(*variant),
            seconds / bare,
            seconds * 1e6 / sizes.updated_instances as f64,
            figure(&updates.attributes_wal, *variant)
        );
    }
    println!(
        "\nPL/pgSQL (statement trigger) / ae_events = {:.1}\n",
        figure(&updates.attributes, Variant::PlPgSql)
            / figure(&updates.attributes, Variant::AeEventsFull)
    );
    println!(
        "### Fan-out: one UPDATE of a skill that is part of all {} instances' snapshots (tcf.skill bubble-up on)\n",
        sizes.fan_out
    );
    println!(
        "| variant | seconds | us per instance | backend peak memory (MiB) |\n|---|---:|---:|---:|"
    );
    for (variant, seconds, peak) in &updates.fan_out {
        println!(
            "| {} | {seconds:.3} | {:.1} | {:.1} |",
            label(*variant),
            seconds * 1e6 / sizes.fan_out as f64,
            *peak as f64 / 1048576.0
        );
    }
}

/// One point of the attributes workload.
struct AttributesPoint {
    attributes: i64,
    star_rule: bool,
    seconds: f64,
    peak_memory_bytes: u64,
}

/// One instance whose measurement has many attributes, inserted in its own transaction (its
/// created event carries them all), without rules and with `*.remarks -> null`: before 0.5.0
/// the rule cost grew with the square of the attributes and memory with ~17 kB each.
fn attributes_workload(bench: &Bench) -> Vec<AttributesPoint> {
    let mut points = Vec::new();
    let mut client = bench.session(Variant::AeEventsOff);
    client
        .batch_execute("TRUNCATE ae_events.outbox, ae_events.instance_state")
        .unwrap();
    for (round, attributes) in [bench.sizes.attributes / 10, bench.sizes.attributes]
        .into_iter()
        .enumerate()
    {
        for star_rule in [false, true] {
            let id = 900_000_000 + 10 * round as i64 + star_rule as i64;
            client
                .batch_execute(&format!(
                    "DELETE FROM ae_events.payload_rules;
                     {rule};
                     INSERT INTO tcf.measurement VALUES ({id}, 'pending', '00:00:00', NULL, NULL, now(), NULL, NULL);
                     INSERT INTO tcf.measurement_attribute
                     SELECT {id}::bigint * 1000000 + n, {id}, (SELECT min(id) FROM tcf.section_configuration_attribute),
                            NULL, n, NULL, 'remark ' || n, NULL, '{{}}', now(), 1, now(), 1
                       FROM generate_series(1, {attributes}) AS n;
                     CHECKPOINT",
                    rule = if star_rule {
                        "INSERT INTO ae_events.payload_rules VALUES ('measurement.measurement_attributes.*.remarks', 'null')"
                    } else {
                        "SELECT 1"
                    }
                ))
                .unwrap();
            let (seconds, peak) = with_peak_memory(&mut client, |client| {
                let started = Instant::now();
                client
                    .batch_execute(&format!(
                        "INSERT INTO ti.instance SELECT {id}, NULL, NULL, NULL, 'in_progress',
                                c.id, ca.id, {id}, NULL, NULL, now(), 1, now(), 1
                           FROM (SELECT min(id) AS id FROM can.candidate) AS c,
                                (SELECT min(id) AS id FROM ae.catalog_assessment) AS ca"
                    ))
                    .unwrap();
                started.elapsed().as_secs_f64()
            });
            let carried: i64 = client
                .query_one(
                    "SELECT jsonb_array_length(payload #> '{measurement,measurement_attributes}')::int8
                       FROM ae_events.outbox WHERE aggregate_id = $1",
                    &[&id],
                )
                .unwrap()
                .get(0);
            assert_eq!(
                carried, attributes,
                "attributes: one event with every attribute"
            );
            println!(
                "attributes {attributes:>7}{}: {seconds:.3} s, peak +{:.1} MiB",
                if star_rule { " with a * rule" } else { "" },
                peak as f64 / 1048576.0
            );
            points.push(AttributesPoint {
                attributes,
                star_rule,
                seconds,
                peak_memory_bytes: peak,
            });
        }
    }
    client
        .batch_execute("DELETE FROM ae_events.payload_rules")
        .unwrap();
    points
}

fn print_attributes(points: &[AttributesPoint]) {
    println!(
        "\n### One instance with many attributes (notify=off)\n\n\
         | attributes | payload rule | seconds | us per attribute | backend peak memory (MiB) | bytes per attribute |\n\
         |---:|---|---:|---:|---:|---:|"
    );
    for point in points {
        println!(
            "| {} | {} | {:.3} | {:.1} | {:.1} | {:.0} |",
            point.attributes,
            if point.star_rule {
                "`measurement.measurement_attributes.*.remarks` -> null"
            } else {
                "none"
            },
            point.seconds,
            point.seconds * 1e6 / point.attributes as f64,
            point.peak_memory_bytes as f64 / 1048576.0,
            point.peak_memory_bytes as f64 / point.attributes as f64
        );
    }
}

/// The concurrency workload of one variant: transactions per second and, where there are events,
/// the instances whose last event differs from their snapshot (missed updates).
struct ConcurrencyResult {
    variant: Variant,
    transactions_per_second: f64,
    missed: Option<i64>,
}

/// 2 writers create instances of 10 shared candidates and measurements (one transaction each)
/// while 2 others change those candidates, measurements and their attributes, for a fixed time.
fn concurrency_workload(bench: &Bench) -> Vec<ConcurrencyResult> {
    let mut results = Vec::new();
    for variant in [Variant::Bare, Variant::AeEventsFull] {
        let mut client = bench.session(variant);
        bench.reset(&mut client, variant);
        let database = bench.database_of(variant);
        let deadline = Instant::now() + Duration::from_secs(bench.sizes.concurrency_seconds);
        let writers: Vec<_> = (0..4u64)
            .map(|writer| {
                let client = bench.connect(database);
                std::thread::spawn(move || concurrent_writer(client, writer, deadline))
            })
            .collect();
        let transactions: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        let seconds = bench.sizes.concurrency_seconds as f64;
        let missed = (variant != Variant::Bare).then(|| {
            client
                .query_one(
                    "SELECT count(*) FROM ti.instance AS i
                      WHERE (SELECT o.payload FROM ae_events.outbox AS o
                              WHERE o.aggregate_id = i.id ORDER BY o.id DESC LIMIT 1)
                            IS DISTINCT FROM ae_events.snapshot(i.id)",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
        });
        println!(
            "concurrency {:<40} {:>8.0} transactions/s, missed {}",
            label(variant),
            transactions as f64 / seconds,
            missed.map_or("-".to_owned(), |m| m.to_string())
        );
        results.push(ConcurrencyResult {
            variant,
            transactions_per_second: transactions as f64 / seconds,
            missed,
        });
    }
    results
}

/// One writer of the concurrency workload: even writers create instances, odd ones change the
/// rows they refer to; returns the transactions committed (deadlocks are retried).
fn concurrent_writer(mut client: Client, writer: u64, deadline: Instant) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ ((writer + 1) * 7919);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut committed = 0;
    while Instant::now() < deadline {
        let shared = 1 + next() % 10;
        let statement = if writer.is_multiple_of(2) {
            format!(
                "INSERT INTO ti.instance SELECT nextval('public.bench_instance_id'), NULL, NULL, NULL,
                     'in_progress', {shared}, 1, {shared}, NULL, NULL, now(), 77, now(), 77"
            )
        } else {
            match next() % 3 {
                0 => format!(
                    "UPDATE can.candidate SET first_name = 'n' || nextval('public.bench_instance_id')
                      WHERE id = {shared}"
                ),
                1 => format!(
                    "INSERT INTO tcf.measurement_attribute
                     SELECT nextval('public.bench_instance_id'), {shared}, 1, NULL, 1, NULL, 'r',
                            NULL, '{{}}', now(), 77, now(), 77"
                ),
                _ => format!(
                    "UPDATE tcf.measurement SET status = 's' || nextval('public.bench_instance_id')
                      WHERE id = {shared}"
                ),
            }
        };
        match client.batch_execute(&statement) {
            Ok(()) => committed += 1,
            Err(error) if error.code().is_some_and(|c| c.code() == "40P01") => {}
            Err(error) => panic!("{statement}: {error}"),
        }
    }
    committed
}

fn print_concurrency(bench: &Bench, results: &[ConcurrencyResult]) {
    println!(
        "\n### Concurrency: 2 writers create instances of 10 shared candidates and measurements while 2 change them ({} s per variant)\n\n\
         | variant | transactions/s | vs bare | instances whose last event is not their snapshot |\n|---|---:|---:|---:|",
        bench.sizes.concurrency_seconds
    );
    let bare = results
        .iter()
        .find(|r| r.variant == Variant::Bare)
        .map_or(f64::NAN, |r| r.transactions_per_second);
    for result in results {
        println!(
            "| {} | {:.0} | {:.2} | {} |",
            label(result.variant),
            result.transactions_per_second,
            result.transactions_per_second / bare,
            result.missed.map_or("-".to_owned(), |m| m.to_string())
        );
    }
}
