//! 27 kinds of garbage planted in a local store: every store-walking command exits 0 (or 3, its
//! documented damage code), names each bad object, and never fails with an I/O error for the
//! store; `verify --repair` clears it all and the healthy entries still load.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use runcache::Store;

mod common;
use common::runcache;

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ab` followed by 62 copies of `c`: a well-formed hex name in shard `ab`.
fn hex(c: char) -> String {
    format!("ab{}", c.to_string().repeat(62))
}

/// How a planted object shows up: as a stray object (named by its path) or as a damaged entry
/// (named by its key).
enum Shows {
    Object(PathBuf),
    Entry(String),
}

/// Plants the garbage; returns what each kind must be reported as.
fn plant(root: &Path, healthy: &runcache::Manifest) -> Vec<(&'static str, Shows)> {
    let mut out = Vec::new();
    let put = |rel: &str, body: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, body).unwrap();
        p
    };
    let obj = |p: PathBuf| Shows::Object(p);
    let entry = |rel: &str| {
        let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
        Shows::Entry(name.trim_end_matches(".json").to_string())
    };

    // Manifests.
    let p = put("manifests/stray", b"x");
    out.push(("plain file where a shard belongs", obj(p)));
    let p = root.join(format!("manifests/ab/{}.json", hex('a')));
    fs::create_dir_all(&p).unwrap();
    out.push(("directory named like a manifest", obj(p)));
    let p = root.join(format!("manifests/ab/{}.json", hex('b')));
    std::os::unix::fs::symlink(&p, &p).unwrap();
    out.push(("symlink loop named like a manifest", obj(p)));
    let p = root
        .join("manifests/ab")
        .join(OsStr::from_bytes(b"bad-\xff\xfe.json"));
    fs::write(&p, b"{}").unwrap();
    out.push(("non-UTF-8 name", obj(p)));
    let rel = format!("manifests/ab/{}.json", hex('d'));
    put(&rel, b"");
    out.push(("empty manifest", entry(&rel)));
    let rel = format!("manifests/ab/{}.json", hex('e'));
    let p = put(&rel, b"");
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    out.push(("huge sparse manifest", entry(&rel)));
    let rel = format!("manifests/ab/{}.json", hex('f'));
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    put(&rel, nested.as_bytes());
    out.push(("deeply nested JSON", entry(&rel)));
    let rel = format!("manifests/ab/{}.json", hex('0'));
    let bytes = healthy.to_bytes();
    put(&rel, &bytes[..bytes.len() / 2]);
    out.push(("truncated manifest", entry(&rel)));
    let rel = format!("manifests/ab/{}.json", hex('1'));
    put(&rel, br#"{"hello": {"nested": [1, {"x": null}]}}"#);
    out.push(("JSON of another schema", entry(&rel)));
    let rel = format!("manifests/ab/{}.json", hex('2'));
    put(&rel, &bytes);
    out.push(("manifest naming another key", entry(&rel)));
    let p = put("manifests/AB/x.json", b"{}");
    out.push(("uppercase shard", obj(p.parent().unwrap().to_path_buf())));
    let p = put(
        &format!("manifests/ab/{}.json", hex('c').to_uppercase()),
        b"{}",
    );
    out.push(("uppercase hex name", obj(p)));
    let p = put(&format!("manifests/cd/{}.json", hex('3')), b"{}");
    out.push(("manifest in the wrong shard", obj(p)));

    // Blobs.
    let p = put("blobs/stray", b"x");
    out.push(("plain file in blobs/", obj(p)));
    let p = put("blobs/ab/not-a-digest", b"x");
    out.push(("blob name that is not a digest", obj(p)));
    let p = root.join(format!("blobs/ab/{}", hex('4')));
    fs::create_dir_all(&p).unwrap();
    out.push(("directory named like a blob", obj(p)));
    let p = root.join("blobs/ab/sub");
    fs::create_dir_all(p.join("deeper")).unwrap();
    out.push(("subdirectory in a blob shard", obj(p)));
    let p = root.join("blobs/cd");
    std::os::unix::fs::symlink(&p, &p).unwrap();
    out.push(("symlink loop as a blob shard", obj(p)));

    // Usage stamps.
    let p = put("used/stray", b"1");
    out.push(("plain file in used/", obj(p)));
    let rel = format!(
        "used/{}/{}",
        &healthy.key.to_hex()[..2],
        healthy.key.to_hex()
    );
    let p = put(&rel, b"");
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    out.push(("huge sparse usage stamp", obj(p)));

    // Leases.
    let p = put(&format!("leases/ab/{}/g.1", hex('5')), b"");
    out.push(("empty lease record", obj(p)));
    let p = put(
        &format!("leases/ab/{}/g.1", hex('6')),
        br#"{"owner": [[[[{"generation": 1}]]]]}"#,
    );
    out.push(("lease record of another schema", obj(p)));
    let p = put(&format!("leases/ab/{}/junk", hex('7')), b"x");
    out.push(("unknown file in a lease directory", obj(p)));
    let p = put("leases/ab/stray", b"x");
    out.push(("plain file in a lease shard", obj(p)));
    let p = put("leases/zz/x", b"x");
    out.push(("bad lease shard", obj(p.parent().unwrap().to_path_buf())));

    // Records.
    let p = put("records/sweep", b"x");
    out.push(("plain file where a record kind belongs", obj(p)));
    let p = root.join("records/notes/.hidden-dir/x");
    fs::create_dir_all(&p).unwrap();
    out.push((
        "directory inside a record kind",
        obj(p.parent().unwrap().to_path_buf()),
    ));
    out
}

#[test]
fn every_command_survives_27_kinds_of_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(root.to_str().unwrap()).unwrap();
    let t = store.task("garbage.fit");
    for seed in 0..2u32 {
        t.get_or_compute_bytes(&seed, |_| Ok::<_, String>(vec![seed as u8; 20_000]))
            .unwrap();
    }
    let healthy = store.manifest(&t.key(&0u32).unwrap()).unwrap().unwrap();
    store.flush_usage();
    drop(store);
    let planted = plant(&root, &healthy);
    assert_eq!(planted.len(), 27, "27 kinds of garbage");

    // (command, exit code, names the damaged entries, names every damaged object)
    let damaged_key = match &planted.iter().find(|p| p.0 == "empty manifest").unwrap().1 {
        Shows::Entry(k) => k.clone(),
        Shows::Object(_) => unreachable!(),
    };
    let commands: Vec<(Vec<&str>, i32, bool)> = vec![
        (vec!["ls"], 0, true),
        (vec!["ls", "--json"], 0, true),
        (vec!["ls", "--namespaces"], 0, true),
        (vec!["du"], 0, true),
        (vec!["du", "--json"], 0, true),
        (vec!["gc", "--max-size", "1G", "--dry-run"], 0, true),
        (vec!["leases"], 0, false),
        (vec!["leases", "--json"], 0, false),
        (vec!["status"], 0, false),
        (vec!["status", "--json"], 0, false),
        (vec!["verify"], 3, true),
        (vec!["verify", "--json"], 3, true),
        (vec!["show", &damaged_key], 3, false),
        (vec!["gc", "--max-size", "1G", "--json"], 0, true),
        // Last: damaged entries are idle since ever, so this evicts (and names) them.
        (vec!["gc", "--older-than", "1h"], 0, true),
    ];
    for (args, code, names_entries) in &commands {
        let out = runcache(&root, args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}:\n{all}");
        assert!(!all.contains("I/O error"), "{args:?}:\n{all}");
        assert!(!all.contains("runcache: error"), "{args:?}:\n{all}");
        if args[0] == "show" {
            assert!(
                all.contains("DAMAGED") && all.contains(&damaged_key),
                "{all}"
            );
            continue;
        }
        for (what, shows) in &planted {
            match shows {
                Shows::Object(p) => {
                    let shown = p.to_string_lossy();
                    let json_escaped = serde_json::to_string(&shown).unwrap();
                    assert!(
                        all.contains(shown.as_ref())
                            || all.contains(json_escaped.trim_matches('"')),
                        "{args:?} does not name the {what} {shown}:\n{all}"
                    );
                }
                Shows::Entry(key) if *names_entries => {
                    assert!(
                        all.contains(key),
                        "{args:?} does not name the {what} {key}:\n{all}"
                    );
                }
                Shows::Entry(_) => {}
            }
        }
    }

    let repair = runcache(&root, &["verify", "--repair"]);
    assert_eq!(repair.status.code(), Some(0), "{}", text(&repair));
    let again = runcache(&root, &["verify"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(text(&again).contains("0 damaged entries, 0 damaged objects"));
    let store = Store::open(root.to_str().unwrap()).unwrap();
    let t = store.task("garbage.fit");
    for seed in 0..2u32 {
        let v = t
            .get_or_compute_bytes(&seed, |_| Err::<Vec<u8>, _>("must hit"))
            .unwrap();
        assert_eq!(v, vec![seed as u8; 20_000]);
    }
    assert_eq!(store.entries().unwrap().len(), 2);
}
