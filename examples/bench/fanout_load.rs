//! The fan-out-under-load workload (issue 26): an assessment taken by `fan_out_under_load`
//! instances is renamed (bubble-up on for `ae.assessment`) while one session creates instances
//! of that same assessment one at a time and another runs the deferred fan-outs as a relay
//! does. Measured for the default (the fan-out deferred) and for the fan-out written in the
//! rename's own transaction (`ae_events.fanout_inline_limit` above N, as before 0.7.1): the
//! longest creation wait while the rename commits and its events are written, the rename's
//! commit time, and the time until the last updated event exists.

use super::Bench;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct FanoutLoad {
    pub label: &'static str,
    pub instances: i64,
    /// Creations per second and their median time before the rename (ms).
    pub creation_median_before_ms: f64,
    /// The longest creation from the rename's start until its last event existed (ms).
    pub creation_longest_during_ms: f64,
    pub rename_commit_ms: f64,
    pub last_event_after_ms: f64,
    pub events: i64,
}

/// Creations of catalog assessment 21 (assessment 11), one per transaction, until `stop`:
/// each one's start (since `origin`) and duration.
fn creator(mut client: Client, origin: Instant, stop: Arc<AtomicBool>) -> Vec<(f64, f64)> {
    let mut timings = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        client
            .batch_execute(
                "INSERT INTO ti.instance SELECT nextval('public.bench_instance_id'), NULL, NULL,
                     NULL, 'in_progress', 1, 21, 1, NULL, NULL, now(), 77, now(), 77",
            )
            .unwrap();
        timings.push((
            started.duration_since(origin).as_secs_f64(),
            started.elapsed().as_secs_f64(),
        ));
        std::thread::sleep(Duration::from_millis(2));
    }
    timings
}

fn updated_events(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM ae_events.outbox WHERE event_type = 'ae_test_instance_updated'",
            &[],
        )
        .unwrap()
        .get(0)
}

pub fn fanout_under_load(bench: &Bench) -> Vec<FanoutLoad> {
    let instances = bench.sizes.fan_out_under_load;
    let database = bench.clone_database("bench_template", "bench_fanout_load");
    let mut client = bench.connect(&database);
    client
        .batch_execute(&format!(
            "INSERT INTO ae.assessment SELECT 11, 'Popular', 'basic', 'published', now(), now();
             INSERT INTO ae.catalog_assessment VALUES (21, 11, 1);
             INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress', 1 + g % 1000, 21, 1 + g % 1000, NULL, NULL,
                    now(), 77, now(), 77
               FROM generate_series(1, {instances}) AS g;
             CREATE INDEX ON ti.instance (catalog_assessment_id);
             CREATE INDEX ON ae.catalog_assessment (assessment_id);
             CREATE EXTENSION ae_events;
             UPDATE ae_events.bubble_up SET enabled = true WHERE source_table = 'ae.assessment';"
        ))
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").unwrap();
    let mut results = Vec::new();
    for (round, (label, inline_limit)) in [
        ("deferred (default limit 1000)", None),
        ("in the rename's transaction", Some(i32::MAX)),
    ]
    .into_iter()
    .enumerate()
    {
        let before = updated_events(&mut client);
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let creations = {
            let client = bench.connect(&database);
            let stop = stop.clone();
            std::thread::spawn(move || creator(client, origin, stop))
        };
        // The relay's part: run fan-outs, one step per transaction, while the rename is on.
        let last_step = Arc::new(Mutex::new(None::<Instant>));
        let runner = {
            let mut client = bench.connect(&database);
            let stop = stop.clone();
            let last_step = last_step.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let handled: i64 = client
                        .query_one("SELECT ae_events.run_fanouts()", &[])
                        .unwrap()
                        .get(0);
                    if handled > 0 {
                        *last_step.lock().unwrap() = Some(Instant::now());
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_secs(1));
        let mut renamer = bench.connect(&database);
        if let Some(limit) = inline_limit {
            renamer
                .batch_execute(&format!("SET ae_events.fanout_inline_limit = {limit}"))
                .unwrap();
        }
        let rename_started = Instant::now();
        renamer
            .batch_execute(&format!(
                "UPDATE ae.assessment SET name = 'Renamed {round}' WHERE id = 11"
            ))
            .unwrap();
        let rename_commit = rename_started.elapsed().as_secs_f64();
        // Until every updated event exists (the creations meanwhile show the new name already).
        let deadline = Instant::now() + Duration::from_secs(600);
        while updated_events(&mut client) - before < instances && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let done = last_step
            .lock()
            .unwrap()
            .filter(|_| inline_limit.is_none())
            .unwrap_or(rename_started + Duration::from_secs_f64(rename_commit));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        let timings = creations.join().unwrap();
        runner.join().unwrap();
        let start = rename_started.duration_since(origin).as_secs_f64();
        let end = done.duration_since(origin).as_secs_f64();
        let mut before_rename: Vec<f64> = timings
            .iter()
            .filter(|(at, _)| *at < start)
            .map(|(_, took)| *took)
            .collect();
        before_rename.sort_by(f64::total_cmp);
        let longest = timings
            .iter()
            .filter(|(at, took)| at + took >= start && *at <= end)
            .map(|(_, took)| *took)
            .fold(0.0, f64::max);
        let result = FanoutLoad {
            label,
            instances,
            creation_median_before_ms: before_rename
                .get(before_rename.len() / 2)
                .copied()
                .unwrap_or(f64::NAN)
                * 1000.0,
            creation_longest_during_ms: longest * 1000.0,
            rename_commit_ms: rename_commit * 1000.0,
            last_event_after_ms: (end - start) * 1000.0,
            events: updated_events(&mut client) - before,
        };
        println!(
            "fan-out under load, {label}: rename {:.0} ms, last event after {:.0} ms, longest creation {:.1} ms",
            result.rename_commit_ms, result.last_event_after_ms, result.creation_longest_during_ms
        );
        results.push(result);
    }
    results
}

pub fn print(results: &[FanoutLoad]) {
    let Some(first) = results.first() else {
        return;
    };
    println!(
        "\n### Fan-out under load: renaming an assessment of {} instances while one session creates instances of it\n\n\
         | fan-out | creation p50 before | longest creation during | rename's commit | last updated event after | updated events |\n|---|---:|---:|---:|---:|---:|",
        first.instances
    );
    for result in results {
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.0} ms | {:.0} ms | {} |",
            result.label,
            result.creation_median_before_ms,
            result.creation_longest_during_ms,
            result.rename_commit_ms,
            result.last_event_after_ms,
            result.events
        );
    }
}
