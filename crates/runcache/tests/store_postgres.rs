//! The conformance suite and real-process compute-once checks against the PostgreSQL store.
//!
//! Needs a server: `eval "$(scripts/services/postgres start)"` sets `RUNCACHE_TEST_POSTGRES`
//! (and `PGPASSWORD`). Without it the tests are skipped, except under `CI=true`, where they fail.
//! Every store gets its own schema, dropped at the end of its test.
//!
//! The process tests (shared with the other stores in `conformance::processes`) re-execute this
//! binary: `child` does nothing unless `RC_CHILD_ROLE` is set.

#![cfg(feature = "postgres")]

mod conformance;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conformance::processes::{sigkill, wait_for, Procs};
use runcache::lease::LeaseOptions;
use runcache::{Digest, Error, Store, StoreOptions};

/// The test server's URL, or `None` (skip) when it is not set and we are not on CI.
fn server() -> Option<String> {
    conformance::test_service("RUNCACHE_TEST_POSTGRES", "postgres", "PostgreSQL")
}

/// A schema name no other test (or test run) uses.
fn fresh_schema(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t_{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn with_schema(url: &str, schema: &str) -> String {
    format!("{url}?schema={schema}")
}

/// A direct connection for test-side SQL (password from `PGPASSWORD`, like the engine's).
fn admin(url: &str) -> postgres::Client {
    let mut config: postgres::Config = url.parse().unwrap();
    if let Ok(p) = std::env::var("PGPASSWORD") {
        config.password(p);
    }
    config.connect(postgres::NoTls).unwrap()
}

/// Drops the schemas created by a test when it ends (also when it fails).
struct Schemas {
    url: String,
    names: Vec<String>,
}

impl Drop for Schemas {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut c = admin(&self.url);
        for name in &self.names {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
        }
    }
}

#[test]
fn postgres_store_conforms() {
    let Some(url) = server() else { return };
    let schemas = std::sync::Mutex::new(Schemas {
        url: url.clone(),
        names: Vec::new(),
    });
    conformance::run_all(&|| {
        let schema = fresh_schema("conf");
        schemas.lock().unwrap().names.push(schema.clone());
        Store::open(&with_schema(&url, &schema)).unwrap()
    });
}

/// The conformance check for stray rows: a manifest row whose key is not 32 bytes, a held lease
/// whose record does not parse.
#[test]
fn stray_rows_are_damaged_items() {
    let Some(url) = server() else { return };
    let mut schemas = Schemas {
        url: url.clone(),
        names: Vec::new(),
    };
    let plants: [(&str, &str); 2] = [
        (
            "INSERT INTO \"{s}\".manifests (key, body) VALUES ('\\x0102030405', 'x')",
            "table manifests, key 0102030405",
        ),
        (
            "INSERT INTO \"{s}\".leases (key, generation, owner, record, ttl_ms)
             VALUES (decode(repeat('ab', 32), 'hex'), 1, 'o', '{\"gen', 1000)",
            "table leases",
        ),
    ];
    for (sql, fragment) in plants {
        let schema = fresh_schema("stray");
        schemas.names.push(schema.clone());
        let store = Store::open(&with_schema(&url, &schema)).unwrap();
        conformance::damage::stray_object_is_one_damaged_item(store, &|_| {
            admin(&url)
                .batch_execute(&sql.replace("{s}", &schema))
                .unwrap();
            fragment.to_string()
        });
    }
}

/// A manifest row whose body is NULL (a table altered by hand) is one damaged entry: listed,
/// reported and removed by verify, never a failure of the listing.
#[test]
fn a_null_manifest_body_is_a_damaged_entry() {
    let Some(url) = server() else { return };
    let schema = fresh_schema("null");
    let _cleanup = Schemas {
        url: url.clone(),
        names: vec![schema.clone()],
    };
    let store = Store::open(&with_schema(&url, &schema)).unwrap();
    let t = store.task("pg.null");
    t.get_or_compute(&1u32, || Ok::<_, String>(1u32)).unwrap();
    admin(&url)
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".manifests ALTER COLUMN body DROP NOT NULL;
             INSERT INTO \"{schema}\".manifests (key, body) VALUES (decode(repeat('cd', 32), 'hex'), NULL)"
        ))
        .unwrap();
    let entries = store.entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries.iter().filter(|e| e.manifest.is_none()).count(), 1);
    let report = store.verify(true, &|_, _, _| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.removed, 1);
    assert_eq!(store.entries().unwrap().len(), 1);
    assert_eq!(
        t.get_or_compute(&1u32, || Err::<u32, _>("must hit"))
            .unwrap(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Real processes

/// Results of 8 MiB: several chunks, so that an upload can be cut between them.
const BIG: usize = 8 << 20;

#[test]
fn child() {
    conformance::processes::child();
}

#[test]
fn eight_processes_racing_compute_once() {
    let Some(url) = server() else { return };
    let schema = fresh_schema("race");
    let _cleanup = Schemas {
        url: url.clone(),
        names: vec![schema.clone()],
    };
    let p = Procs::new(&with_schema(&url, &schema), BIG);
    conformance::processes::racing_rounds(&p, 12);
}

#[test]
fn sigkill_of_the_holder_at_random_points_never_leaves_a_partial_entry() {
    let Some(url) = server() else { return };
    let schema = fresh_schema("kill");
    let _cleanup = Schemas {
        url: url.clone(),
        names: vec![schema.clone()],
    };
    let p = Procs::new(&with_schema(&url, &schema), BIG);
    // Anywhere from before the lease to after the commit (the 8 MiB upload included).
    conformance::processes::sigkill_rounds(&p, 10, 500);
}

/// Without the same-host shortcut, a SIGKILLed holder is taken over once its heartbeat has been
/// silent for a TTL (by the server's clock or the observer's), and the entry completes.
#[test]
fn sigkilled_holder_is_taken_over_by_lease_expiry() {
    let Some(url) = server() else { return };
    let schema = fresh_schema("expiry");
    let _cleanup = Schemas {
        url: url.clone(),
        names: vec![schema.clone()],
    };
    let p = Procs::new(&with_schema(&url, &schema), BIG);
    let loc = p.location.as_str();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("RC_COMPUTE_MS", "60000".to_string()),
        ("RC_TTL_MS", "600".to_string()),
        ("RC_SAME_HOST", "0".to_string()),
    ];
    let mut child = p.spawn("slow", dir.path(), 1, &env);
    wait_for(&dir.path().join("started-1"), Duration::from_secs(60));
    let store = Store::open_with(
        loc,
        StoreOptions {
            lease: LeaseOptions {
                same_host_liveness: false,
                ..LeaseOptions::with_ttl(Duration::from_millis(600))
            },
            ..Default::default()
        },
    )
    .unwrap();
    let key = store.task("proc.slow").key(&1u64).unwrap();
    let held = store
        .leases()
        .view(&key)
        .unwrap()
        .expect("the child holds the lease");
    assert_eq!(held.record.as_ref().unwrap().pid, child.id());
    sigkill(&child);
    let _ = child.wait();
    p.check_whole(&store, 1);
}

/// The connection of a process uploading a result is killed by the server mid-upload
/// (`pg_terminate_backend`, which is also what a server shutdown does to its sessions): the
/// process gets a clear error, nothing of the entry is visible, and the next call recomputes.
#[test]
fn connection_killed_mid_upload_leaves_nothing_and_the_next_call_recomputes() {
    let Some(url) = server() else { return };
    let schema = fresh_schema("cut");
    let _cleanup = Schemas {
        url: url.clone(),
        names: vec![schema.clone()],
    };
    let p = Procs::new(&with_schema(&url, &schema), BIG);
    let store = Store::open(&p.location).unwrap();
    let round = 5u64;
    let value = p.big_value(round);
    let digest = Digest::of(&value);
    let d = &digest.as_bytes()[..];

    // Hold an uncommitted row with the key of chunk 3 of the value's blob: the uploader writes
    // chunks 0-2 in its transaction, then blocks on ours. That is the moment we cut it off.
    let mut blocking = admin(&url);
    let mut tx = blocking.transaction().unwrap();
    tx.execute(
        &format!(
            "INSERT INTO \"{schema}\".blob_chunks (digest, chunk_no, data) VALUES ($1, 3, '\\x00')"
        ),
        &[&d],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = p.spawn("upload", dir.path(), round, &[]);
    let blocker: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    // Watched from another session: pg_stat_activity is a snapshot fixed for a transaction.
    let mut watcher = admin(&url);
    let started = Instant::now();
    let victim: i32 = loop {
        let rows = watcher
            .query(
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&blocker],
            )
            .unwrap();
        if let Some(row) = rows.first() {
            break row.get(0);
        }
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the uploader ended without blocking on chunk 3: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the uploader never blocked on chunk 3"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // Three chunks of the upload are in the victim's open transaction.
    let killed: bool = watcher
        .query_one("SELECT pg_terminate_backend($1)", &[&victim])
        .unwrap()
        .get(0);
    assert!(killed);
    tx.rollback().unwrap();

    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("the interrupted uploader said: {stdout}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("was lost while storing blob") && stdout.contains("Retry once"),
        "{stdout}"
    );
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        assert!(!stdout.contains(&pw), "the password leaked into a message");
    }

    // Nothing of the entry is visible: no manifest, no blob, no chunk.
    let task = store.task("proc.upload");
    assert!(task.entry(&round).unwrap().info().unwrap().is_none());
    assert!(!store.backend().has_blob(&digest).unwrap());
    let chunks: i64 = blocking
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".blob_chunks"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(chunks, 0, "chunks of the interrupted upload are visible");

    // The next call computes it (once) and the entry is whole.
    let calls = AtomicUsize::new(0);
    let got = task
        .get_or_compute_bytes(&round, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(value.clone())
        })
        .unwrap();
    assert!(got == value);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(task.entry(&round).unwrap().load_bytes().unwrap(), value);
    assert!(store.backend().has_blob(&digest).unwrap());
    let report = store.verify(false, &|_, _, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn newer_schema_version_is_refused_with_a_clear_message() {
    let Some(url) = server() else { return };
    let schema = fresh_schema("newer");
    let _cleanup = Schemas {
        url: url.clone(),
        names: vec![schema.clone()],
    };
    let loc = with_schema(&url, &schema);
    Store::open(&loc).unwrap();
    admin(&url)
        .execute(
            &format!(
                "UPDATE \"{schema}\".runcache_meta SET value = '7' WHERE name = 'schema_version'"
            ),
            &[],
        )
        .unwrap();
    let err = Store::open(&loc).unwrap_err();
    assert!(matches!(err, Error::NewerFormat { found: 7, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("Upgrade runcache"), "{msg}");
    assert!(msg.contains(&format!("schema={schema}")), "{msg}");
}

#[test]
fn a_current_schema_without_the_records_table_gets_it_on_open() {
    let Some(url) = server() else { return };
    let schema = fresh_schema("records");
    let _cleanup = Schemas {
        url: url.clone(),
        names: vec![schema.clone()],
    };
    let loc = with_schema(&url, &schema);
    let store = Store::open(&loc).unwrap();
    store
        .task("old")
        .get_or_compute(&1, || Ok::<_, String>(1u8))
        .unwrap();
    drop(store);
    // As an engine from before records left it: version 1, no records table.
    let mut admin = admin(&url);
    admin
        .batch_execute(&format!("DROP TABLE \"{schema}\".records"))
        .unwrap();

    // A role that may not create tables in the schema still opens the store; only records fail.
    admin
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA \"{schema}\" FROM CURRENT_USER"
        ))
        .unwrap();
    let limited = Store::open(&loc).unwrap();
    assert_eq!(
        limited
            .task("old")
            .get_or_compute(&1, || Err::<u8, _>("must hit"))
            .unwrap(),
        1
    );
    let err = limited
        .backend()
        .put_record("sweep", "a", b"x")
        .unwrap_err();
    assert!(err.to_string().contains("records"), "{err}");
    drop(limited);
    admin
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA \"{schema}\" TO CURRENT_USER"
        ))
        .unwrap();

    let store = Store::open(&loc).unwrap();
    store.backend().put_record("sweep", "a", b"x").unwrap();
    assert_eq!(
        store.backend().get_record("sweep", "a").unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(
        store
            .task("old")
            .get_or_compute(&1, || Err::<u8, _>("must hit"))
            .unwrap(),
        1,
        "the existing entries are untouched"
    );
    let version: String = admin
        .query_one(
            &format!("SELECT value FROM \"{schema}\".runcache_meta WHERE name = 'schema_version'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, "1", "adding the table needs no version bump");
}

#[test]
fn unreachable_server_is_a_clear_error_without_the_password() {
    // Needs no server: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let loc =
        format!("postgres://someone:hunter2@127.0.0.1:{port}/nodb?schema=s&connect_timeout=5");
    let err = Store::open(&loc).unwrap_err();
    assert!(matches!(err, Error::BadStore { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "cannot connect to postgres at 127.0.0.1:{port}/nodb"
        )),
        "{msg}"
    );
    assert!(msg.contains("PGPASSWORD"), "{msg}");
    assert!(!msg.contains("hunter2"), "password leaked: {msg}");
}

#[test]
fn wrong_password_is_a_clear_error_without_the_password() {
    let Some(url) = server() else { return };
    let wrong = url.replacen("://runcache@", "://runcache:not-the-password@", 1);
    if wrong == url {
        eprintln!("skipping: the test URL does not name user runcache");
        return;
    }
    let err = Store::open(&with_schema(&wrong, "s")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BadStore { .. }), "{msg}");
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains("not-the-password"), "password leaked: {msg}");
}
