//! `runcache::run` through the Rust API: unchanged inputs are not re-read, signed stores sign
//! and check command entries. (Every backend runs `conformance::run`; real concurrent `runcache
//! run` processes are tested in `runcache-cli/tests/run.rs`.)

mod conformance;

use std::fs;
use std::time::Duration;

use conformance::run::{run_capturing, shell};
use runcache::{file_digest, Error, SigningKey, Store, StoreOptions};

/// Lets a just-written file settle: the digest of a file changed (mtime or ctime) less than a
/// second ago is not remembered, as it could still change within the timestamp's granularity.
fn settle(_path: &std::path::Path) {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn unchanged_inputs_are_not_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    let input = dir.path().join("big.bin");
    fs::write(&input, vec![7u8; 4 << 20]).unwrap();
    settle(&input);
    let mut spec = shell(dir.path(), "echo x >> runs; wc -c < big.bin");
    spec.inputs = vec!["big.bin".into()];
    let (first, out, _) = run_capturing(&store, &spec);
    assert!(!first.replayed);
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        (4 << 20).to_string()
    );
    let (_, _, reads_before) = file_digest::stats();
    let (again, _, _) = run_capturing(&store, &spec);
    assert!(again.replayed);
    let (_, _, reads_after) = file_digest::stats();
    assert_eq!(
        reads_after, reads_before,
        "an unchanged input was read again"
    );
    // Changed content of the same size: read again, and a miss.
    fs::write(&input, vec![8u8; 4 << 20]).unwrap();
    settle(&input);
    let (third, _, _) = run_capturing(&store, &spec);
    assert!(!third.replayed, "a changed input was replayed");
    assert!(file_digest::stats().2 > reads_after);
}

#[test]
fn signed_stores_sign_command_entries_and_refuse_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let open = |material: &str| {
        let options = StoreOptions {
            signing_key: Some(SigningKey::new(material).unwrap()),
            ..StoreOptions::default()
        };
        Store::open_with(path.to_str().unwrap(), options).unwrap()
    };
    let spec = shell(dir.path(), "echo x >> runs; echo signed");
    let (r, out, _) = run_capturing(&open("team secret one"), &spec);
    assert!(!r.replayed);
    let m = open("team secret one").manifest(&r.key).unwrap().unwrap();
    assert!(m.signature.is_some(), "the entry is not signed");
    let (again, out2, _) = run_capturing(&open("team secret one"), &spec);
    assert!(again.replayed);
    assert_eq!(out, out2);
    // Another key: the entry is not trusted, so nothing is replayed from it.
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let err = runcache::run::run(
        &open("another secret"),
        &spec,
        runcache::run::Streams {
            stdout: &mut o,
            stderr: &mut e,
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Signature { .. }), "{err}");
    assert!(o.is_empty(), "an untrusted entry was replayed");
}
