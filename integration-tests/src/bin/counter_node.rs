//! A counter command processor as its own process, so tests can kill it for real
//! (SIGKILL: no hand-over, no final snapshot, no LeaveGroup) or freeze it (SIGSTOP).
//!
//! Environment: `KAFKA_BOOTSTRAP_SERVERS`, `TRIBUTARY_PREFIX`, `TRIBUTARY_PARTITIONS`;
//! optional:
//! - `TRIBUTARY_PAUSE_FILE`: at the fault point `TRIBUTARY_PAUSE_AT`
//!   (`before_transaction`, the default; `before_offsets`: events produced and in the
//!   log, transaction open; `before_commit`; `after_commit`: committed, replies
//!   not sent) of batch `TRIBUTARY_PAUSE_BATCH` (default 1, the first), the node
//!   prints `paused` and waits until that file exists;
//! - `TRIBUTARY_MAX_BATCH`: most commands per batch;
//! - `TRIBUTARY_TRANSACTION_TIMEOUT_MS`: the processor's transaction timeout;
//! - `TRIBUTARY_SNAPSHOT_SCHEMA`: snapshots in this Postgres schema (at
//!   `DATABASE_URL`), with `TRIBUTARY_FLUSH_EVERY` and `TRIBUTARY_MAX_CACHED`
//!   (`flush_every`, `max_cached_aggregates`) when given;
//! - `TRIBUTARY_DEDUP_WINDOW_SECS`: the processor's dedup window;
//! - `TRIBUTARY_BATCH_LINGER_MS` and `TRIBUTARY_MAX_TRANSACTIONS_AT_ONCE`: the
//!   processor's `batch_linger` and `max_transactions_at_once` (read by
//!   `test_settings`);
//! - `TRIBUTARY_PRINT_STATS`: print a line
//!   `stats <cached aggregates> <loaded> <evicted> <restores> <restore ms> <heap>`
//!   every second (for the benchmarks), where `<heap>` is the bytes the process's
//!   Rust code holds on the heap when built with the feature `heap-stats` (memory
//!   that librdkafka's C code allocates is not counted), `-` without it.
//!
//! Prints `fenced` once a commit of it was refused because another owner fenced it.

#![allow(clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tributary::command::{FaultPoint, ProcessorSettings};
use tributary_integration_tests::command_support::{counter_processor, test_settings};

/// Counts the heap's bytes in use (`heap-stats`).
#[cfg(feature = "heap-stats")]
#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// The bytes the process's Rust code holds on the heap now, `-` without `heap-stats`.
fn heap_in_use() -> String {
    #[cfg(feature = "heap-stats")]
    {
        let stats = HEAP.stats();
        stats
            .bytes_allocated
            .saturating_sub(stats.bytes_deallocated)
            .to_string()
    }
    #[cfg(not(feature = "heap-stats"))]
    {
        "-".to_owned()
    }
}

#[tokio::main]
async fn main() {
    tributary_integration_tests::init_tracing();
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect("KAFKA_BOOTSTRAP_SERVERS");
    let prefix = std::env::var("TRIBUTARY_PREFIX").expect("TRIBUTARY_PREFIX");
    let partitions: i32 = std::env::var("TRIBUTARY_PARTITIONS")
        .expect("TRIBUTARY_PARTITIONS")
        .parse()
        .expect("a number");
    let mut settings: ProcessorSettings = test_settings();
    if let Ok(ms) = std::env::var("TRIBUTARY_TRANSACTION_TIMEOUT_MS") {
        settings.transaction_timeout = Duration::from_millis(ms.parse().expect("a number"));
    }
    let number = |key: &str| {
        std::env::var(key)
            .ok()
            .map(|v| v.parse::<u64>().expect("a number"))
    };
    if let Some(n) = number("TRIBUTARY_FLUSH_EVERY") {
        settings.flush_every = n;
    }
    if let Some(n) = number("TRIBUTARY_MAX_BATCH") {
        settings.max_batch = usize::try_from(n).expect("a count");
    }
    if let Some(n) = number("TRIBUTARY_DEDUP_WINDOW_SECS") {
        settings.dedup_window = Duration::from_secs(n);
    }
    if let Some(n) = number("TRIBUTARY_MAX_CACHED") {
        settings.max_cached_aggregates = usize::try_from(n).expect("a count");
    }
    let mut processor = counter_processor(&bootstrap, &prefix, partitions).settings(settings);
    if let Ok(schema) = std::env::var("TRIBUTARY_SNAPSHOT_SCHEMA") {
        let url = tributary_integration_tests::database_url();
        let store = tributary::PgStore::connect(&url, &schema)
            .await
            .expect("Postgres for snapshots");
        processor = processor.snapshots(store);
    }
    if let Ok(file) = std::env::var("TRIBUTARY_PAUSE_FILE") {
        let at = match std::env::var("TRIBUTARY_PAUSE_AT").as_deref() {
            Err(_) | Ok("before_transaction") => FaultPoint::BeforeTransaction,
            Ok("before_offsets") => FaultPoint::BeforeOffsets,
            Ok("before_commit") => FaultPoint::BeforeCommit,
            Ok("after_commit") => FaultPoint::AfterCommit,
            Ok(other) => panic!("unknown TRIBUTARY_PAUSE_AT {other}"),
        };
        let batch = number("TRIBUTARY_PAUSE_BATCH").unwrap_or(1);
        let seen = AtomicU64::new(0);
        processor = processor.fault_hook(move |point, _partition| {
            if point == at && seen.fetch_add(1, Ordering::SeqCst) + 1 == batch {
                println!("paused");
                let _ = std::io::stdout().flush();
                while !std::path::Path::new(&file).exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
    }
    let processor = processor.start().await.expect("processor starts");
    let mut reported = false;
    let print_stats = std::env::var_os("TRIBUTARY_PRINT_STATS").is_some();
    // Run until killed, or until the processor stops by itself.
    for tick in 1_u64.. {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if print_stats && tick % 10 == 0 {
            let stats = processor.stats();
            let c = stats.counters();
            println!(
                "stats {} {} {} {} {} {}",
                stats.cached_aggregates(),
                c.aggregates_loaded,
                c.aggregates_evicted,
                c.restores,
                c.restore_millis,
                heap_in_use()
            );
            let _ = std::io::stdout().flush();
        }
        if !reported && processor.stats().counters().fenced > 0 {
            reported = true;
            println!("fenced");
            let _ = std::io::stdout().flush();
        }
        if processor.is_finished() {
            let result = processor.shutdown().await;
            eprintln!("counter_node: processor stopped: {result:?}");
            std::process::exit(1);
        }
    }
}
