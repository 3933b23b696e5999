//! Replays every committed fuzzing input (`fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`) through the same entry points the fuzz targets call, on
//! stable, so that CI checks them without a nightly toolchain or libFuzzer.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use tidings_fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep" && n != "README.md"))
        .collect();
    out.sort();
    out
}

/// The names of the sub-directories of `dir`.
fn subdirs(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus() {
    let names: BTreeSet<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    let target_files: BTreeSet<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(target_files, names, "fuzz/fuzz_targets/ and TARGETS differ");
    assert_eq!(
        subdirs(&fuzz_dir().join("corpus")),
        names,
        "fuzz/corpus/ and TARGETS differ"
    );
    let regressions = fuzz_dir().join("regressions");
    if regressions.exists() {
        let extra: Vec<String> = subdirs(&regressions).difference(&names).cloned().collect();
        assert!(extra.is_empty(), "regressions for unknown targets: {extra:?}");
    }
}

#[test]
fn the_whole_corpus_and_every_regression_replay_cleanly() {
    let mut failures = Vec::new();
    for (name, entry) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is missing or empty");
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
        eprintln!(
            "{name}: {} corpus and {} regression inputs",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(failures.is_empty(), "inputs failing their target: {failures:#?}");
}
