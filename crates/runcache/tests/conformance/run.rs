//! `runcache::run` on every backend: a command's output, outputs and failure round-trip, and
//! a damaged output artifact is noticed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use runcache::run::{run, RunResult, RunSpec, Streams};
use runcache::Store;

/// Runs `spec` on `store`, returning the result and what reached stdout and stderr.
pub fn run_capturing(store: &Store, spec: &RunSpec) -> (RunResult, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = run(
        store,
        spec,
        Streams {
            stdout: &mut out,
            stderr: &mut err,
        },
    )
    .unwrap();
    (r, out, err)
}

/// A spec running `sh -c SCRIPT` in `cwd`.
pub fn shell(cwd: &Path, script: &str) -> RunSpec {
    let mut spec = RunSpec::new(["sh", "-c", script]).unwrap();
    spec.cwd = cwd.to_path_buf();
    spec
}

fn runs(cwd: &Path) -> usize {
    fs::read_to_string(cwd.join("runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

pub fn commands_run_once_and_replay(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut spec = shell(
        cwd,
        "echo x >> runs; printf 'out\\0bin'; echo err >&2; mkdir -p o; echo 1 > o/f; chmod 700 o/f",
    );
    spec.outputs = vec!["o".into()];
    let (first, out, err) = run_capturing(&store, &spec);
    assert!(!first.replayed && first.exit.success());
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\0bin"[..], &b"err\n"[..])
    );
    fs::remove_dir_all(cwd.join("o")).unwrap();
    let (again, out2, err2) = run_capturing(&store, &spec);
    assert!(again.replayed, "the second run was not replayed");
    assert_eq!((out2, err2), (out, err));
    assert_eq!(fs::read_to_string(cwd.join("o/f")).unwrap(), "1\n");
    let mode = fs::metadata(cwd.join("o/f")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(runs(cwd), 1);

    // A recorded failure replays its status without running.
    let fail = shell(cwd, "echo x >> runs; echo no >&2; exit 4");
    for _ in 0..2 {
        let (r, _, err) = run_capturing(&store, &fail);
        assert_eq!(r.exit.code, Some(4));
        assert_eq!(err, b"no\n");
    }
    assert_eq!(runs(cwd), 2);
}

pub fn a_damaged_output_is_noticed_not_restored(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut spec = shell(cwd, "echo x >> runs; echo good > f");
    spec.outputs = vec!["f".into()];
    run_capturing(&store, &spec);
    // Replace the output's blob with other bytes of the same size.
    let m = store
        .entries()
        .unwrap()
        .into_iter()
        .find_map(|e| e.manifest)
        .unwrap();
    let a = m
        .artifacts
        .iter()
        .find(|a| a.name.starts_with("output/"))
        .unwrap();
    store.backend().delete_blob(&a.digest).unwrap();
    store.backend().put_blob(&a.digest, b"evil\n").unwrap();
    fs::write(cwd.join("f"), "mine\n").unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let e = run(
        &store,
        &spec,
        Streams {
            stdout: &mut out,
            stderr: &mut err,
        },
    )
    .unwrap_err();
    assert!(matches!(e, runcache::Error::Corrupt { .. }), "{e}");
    // The file in place is left as it was, and no temporary file is left beside it.
    assert_eq!(fs::read_to_string(cwd.join("f")).unwrap(), "mine\n");
    let names: Vec<_> = fs::read_dir(cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("runcache-")), "{names:?}");
}
