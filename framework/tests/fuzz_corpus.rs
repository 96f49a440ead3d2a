//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same code
//! as the cargo-fuzz targets (`fuzz/fuzz_targets/common.rs`), without cargo-fuzz, so
//! that a decoder that starts to panic on a known input fails CI. See
//! docs/testing.md, "Fuzzing".

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/fuzz_targets/common.rs"]
mod common;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs every file of the target's corpus; fails naming each input that panics, and
/// if the corpus is missing or empty.
fn replay(target: &str) {
    let Some((_, run)) = common::TARGETS.iter().find(|(name, _)| *name == target) else {
        panic!("no fuzz target {target}");
    };
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()));
    let mut inputs = 0;
    let mut panicked = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if !path.is_file() {
            continue;
        }
        let data =
            fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        inputs += 1;
        if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(
        inputs > 0,
        "the corpus {} is empty; restore it from git or see docs/testing.md, \"Fuzzing\"",
        dir.display()
    );
    assert!(
        panicked.is_empty(),
        "{} of {inputs} inputs of {target} panicked: {panicked:#?}",
        panicked.len()
    );
}

#[test]
fn cloudevent_decode_corpus() {
    replay("cloudevent_decode");
}

#[test]
fn command_decode_corpus() {
    replay("command_decode");
}

#[test]
fn reply_decode_corpus() {
    replay("reply_decode");
}

/// The seeds are valid encodings: each one decodes, and the record layout reads back
/// what was written.
#[test]
fn seeds_decode() {
    let seeds = common::seeds();
    for (target, _) in common::TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "no seed for {target}"
        );
    }
    for (target, name, bytes) in &seeds {
        let Some((_, run)) = common::TARGETS.iter().find(|(t, _)| t == target) else {
            panic!("no fuzz target {target}");
        };
        assert!(run(bytes), "seed {name} of {target} does not decode");
        if *target != "reply_decode" {
            let record = common::split_record(bytes);
            assert_eq!(
                common::join_record(&record).as_deref(),
                Some(bytes.as_slice()),
                "{name}"
            );
        }
    }
}

/// Writes the seeds into the corpus directories (`fuzz/corpus/<target>/seed-*`)
/// when `TRIBUTARY_WRITE_SEEDS=1`, to seed a new target; otherwise checks that the
/// seeds can be written (each joins into bytes that split back into the same
/// record, which `seeds_decode` checks) and writes nothing.
#[test]
fn write_seeds() {
    if std::env::var("TRIBUTARY_WRITE_SEEDS").as_deref() != Ok("1") {
        assert!(!common::seeds().is_empty(), "no seeds");
        return;
    }
    for (target, name, bytes) in common::seeds() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = dir.join(format!("seed-{name}"));
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
