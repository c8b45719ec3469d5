//! The S3-compatible store against a real S3 server on loopback (moto, started by
//! `scripts/services/s3 start`, which exports `RUNCACHE_TEST_S3`): the conformance suite, real
//! processes racing and being killed, an endpoint lost mid-upload, and refusal of a server that
//! ignores conditional writes.
//!
//! Without `RUNCACHE_TEST_S3` every test here is skipped with a message, except on CI
//! (`CI=true`), where a missing service is an error.
//!
//! The test binary re-executes itself for the multi-process tests (shared with the other stores
//! in `conformance::processes`): `child` below does nothing unless `RC_CHILD_ROLE` is set.

#![cfg(feature = "s3")]

mod conformance;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::processes::Procs;
use runcache::{Digest, Error, Status, Store, StoreOptions};

/// The service's base location, or `None` (skip) when it is not running outside CI.
fn service() -> Option<String> {
    conformance::test_service("RUNCACHE_TEST_S3", "s3", "S3")
}

/// A fresh, unique prefix under the service's base location, with `extra` query options.
fn fresh(base: &str, name: &str, extra: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let (target, query) = base.split_once('?').unwrap_or((base, ""));
    let unique = format!(
        "{name}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    format!("{}/{unique}?{query}{extra}", target.trim_end_matches('/'))
}

/// `host:port` of the service's endpoint.
fn endpoint_addr(base: &str) -> String {
    let query = base.split_once('?').map(|q| q.1).unwrap_or("");
    let endpoint = query
        .split('&')
        .find_map(|p| p.strip_prefix("endpoint="))
        .expect("RUNCACHE_TEST_S3 names its endpoint with ?endpoint=");
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// The same location with its endpoint moved to `addr`.
fn with_endpoint(location: &str, addr: &str) -> String {
    let (target, query) = location.split_once('?').unwrap();
    let query: Vec<String> = query
        .split('&')
        .map(|p| {
            if p.starts_with("endpoint=") {
                format!("endpoint=http://{addr}")
            } else {
                p.to_string()
            }
        })
        .collect();
    format!("{target}?{}", query.join("&"))
}

/// Reads objects straight from the server (not through the backend), to check the layout.
struct Raw {
    rt: tokio::runtime::Runtime,
    store: object_store::aws::AmazonS3,
}

impl Raw {
    fn new(base: &str) -> Raw {
        let bucket = base
            .strip_prefix("s3://")
            .unwrap()
            .split(['/', '?'])
            .next()
            .unwrap();
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_endpoint(format!("http://{}", endpoint_addr(base)))
            .with_allow_http(true)
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Raw { rt, store }
    }

    /// The object's content, or `None` if it does not exist.
    fn get(&self, path: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::from(path);
        self.rt.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("{e}"),
            }
        })
    }

    /// Writes an object straight to the server (garbage the backend never writes).
    fn put(&self, path: &str, bytes: &[u8]) {
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::from(path);
        let payload = object_store::PutPayload::from(bytes.to_vec());
        self.rt.block_on(self.store.put(&path, payload)).unwrap();
    }

    /// Names of the objects under `prefix`.
    fn list(&self, prefix: &str) -> Vec<String> {
        use futures::StreamExt;
        use object_store::ObjectStore;
        let path = object_store::path::Path::from(prefix);
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.store.list(Some(&path));
            while let Some(m) = s.next().await {
                out.push(m.unwrap().location.to_string());
            }
            out
        })
    }
}

/// `prefix` (inside the bucket) of a location.
fn object_root(location: &str) -> String {
    let target = location.split_once('?').map_or(location, |t| t.0);
    let rest = target.strip_prefix("s3://").unwrap();
    rest.split_once('/').map_or("", |r| r.1).to_string()
}

#[test]
fn s3_store_conforms() {
    let Some(base) = service() else { return };
    conformance::run_all(&|| Store::open(&fresh(&base, "conf", "")).unwrap());
}

/// The conformance check for stray objects: a misnamed object under the prefix, a blob name
/// that is not a digest, a lock object that does not parse.
#[test]
fn stray_objects_under_the_prefix_are_damaged_items() {
    let Some(base) = service() else { return };
    let hex = format!("ab{}", "c".repeat(62));
    for (rel, body) in [
        ("manifests/stray".to_string(), &b"x"[..]),
        ("blobs/ab/not-a-digest".to_string(), b"x"),
        (format!("leases/ab/{hex}.json"), b"{\"phase\": 7"),
    ] {
        let loc = fresh(&base, "stray", "");
        let store = Store::open(&loc).unwrap();
        let raw = Raw::new(&base);
        let root = object_root(&loc);
        conformance::damage::stray_object_is_one_damaged_item(store, &|_| {
            raw.put(&format!("{root}/{rel}"), body);
            rel.clone()
        });
    }
}

#[test]
fn layout_mirrors_the_local_store() {
    let Some(base) = service() else { return };
    let loc = fresh(&base, "layout", "");
    let store = Store::open(&loc).unwrap();
    assert_eq!(store.location(), loc.split('?').next().unwrap());
    let t = store.task("layout");
    let data = vec![3u8; 100_000];
    t.get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    let m = t.entry(&1).unwrap().info().unwrap().unwrap();
    let raw = Raw::new(&base);
    let root = object_root(&loc);
    let blob = m.blobs[0].digest.to_hex();
    let key = m.key.to_hex();
    let lease = format!("{root}/leases/{}/{key}.json", &key[..2]);
    for (path, what) in [
        (format!("{root}/RUNCACHE-STORE.json"), "marker"),
        (format!("{root}/blobs/{}/{blob}", &blob[..2]), "blob"),
        (
            format!("{root}/manifests/{}/{key}.json", &key[..2]),
            "manifest",
        ),
        (lease.clone(), "lease lock object"),
    ] {
        assert!(raw.get(&path).is_some(), "no {what} at {path}");
    }
    assert_eq!(
        raw.get(&format!("{root}/blobs/{}/{blob}", &blob[..2]))
            .unwrap(),
        data
    );
    // The released lease's lock object keeps its generation and a nonce.
    let body = String::from_utf8(raw.get(&lease).unwrap()).unwrap();
    assert!(body.contains("\"phase\":\"released\""), "{body}");
    assert!(body.contains("\"nonce\""), "{body}");
    assert!(store.backend().blob_path(&m.blobs[0].digest).is_none());
    // Nothing is left under tmp/ (probe objects are removed).
    assert!(raw.list(&format!("{root}/tmp")).is_empty());
}

#[test]
fn reopening_checks_the_format_marker_and_refuses_foreign_prefixes() {
    let Some(base) = service() else { return };
    let loc = fresh(&base, "marker", "");
    Store::open(&loc).unwrap();
    Store::open(&loc).unwrap(); // reopening an existing store is fine
    let store = Store::open(&loc).unwrap();
    store
        .task("m")
        .get_or_compute(&1, || Ok::<_, String>(1u8))
        .unwrap();
    // The bucket root now holds other things and no marker: not a runcache store.
    let (target, query) = loc.split_once('?').unwrap();
    let parent = &target[..target.rfind('/').unwrap()];
    let err = Store::open(&format!("{parent}?{query}")).unwrap_err();
    assert!(err.to_string().contains("not a runcache store"), "{err}");
    // A damaged marker says how to rewrite it, not `verify --repair` (which cannot open it).
    let raw = Raw::new(&base);
    let marker = format!("{}/RUNCACHE-STORE.json", object_root(&loc));
    raw.put(&marker, b"{\"format\": ");
    let err = Store::open(&loc).unwrap_err().to_string();
    assert!(
        err.contains("is damaged") && err.contains("overwrite"),
        "{err}"
    );
    assert!(!err.contains("verify --repair"), "{err}");
}

#[test]
fn unreachable_endpoint_and_missing_bucket_are_clear_errors() {
    let Some(base) = service() else { return };
    // A port nobody listens on: connection refused, a few retries, then a message.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let loc = with_endpoint(&fresh(&base, "gone", ""), &format!("127.0.0.1:{port}"));
    let err = Store::open(&loc).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BadStore { .. }), "{msg}");
    assert!(msg.contains("cannot reach the S3 endpoint"), "{msg}");
    assert!(msg.contains("AWS_ENDPOINT_URL / ?endpoint="), "{msg}");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
    if secret.len() >= 8 {
        assert!(!msg.contains(&secret), "the secret leaked into a message");
    }

    let (target, query) = base.split_once('?').unwrap();
    let rest = target.strip_prefix("s3://").unwrap();
    let prefix = rest.split_once('/').map_or("", |r| r.1);
    let loc = format!("s3://no-such-bucket-runcache/{prefix}?{query}");
    let err = Store::open(&loc).unwrap_err();
    assert!(err.to_string().contains("bucket"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A server that ignores conditional writes must be refused.

/// A tiny fake S3 server that answers like S3 but ignores `If-None-Match` and `If-Match`
/// (every PUT succeeds), as some S3-compatible servers do. It keeps no objects: GET/HEAD say
/// 404, listings are empty. Enough to drive `open`; not a storage server.
fn start_fake_s3_ignoring_conditions() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve_fake(stream));
        }
    });
    addr
}

fn serve_fake(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, extra, content) = match method.as_str() {
            "PUT" => ("200 OK", "ETag: \"0123456789abcdef0123456789abcdef\"\r\n", String::new()),
            "DELETE" => ("204 No Content", "", String::new()),
            "GET" if target.contains("list-type=2") => (
                "200 OK",
                "Content-Type: application/xml\r\n",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult></ListBucketResult>"
                    .to_string(),
            ),
            _ => (
                "404 Not Found",
                "Content-Type: application/xml\r\n",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>not found</Message></Error>"
                    .to_string(),
            ),
        };
        let content = if method == "HEAD" {
            String::new()
        } else {
            content
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n{content}",
            content.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_server_ignoring_conditional_writes_is_refused_unless_best_effort() {
    // Needs no real service, but follows the same skip rule so that credentials are set.
    let Some(_) = service() else { return };
    let addr = start_fake_s3_ignoring_conditions();
    let loc = format!("s3://fake/prefix?endpoint=http://{addr}&allow_http=true");
    let err = Store::open(&loc).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BadStore { .. }), "{msg}");
    assert!(msg.contains("does not honour conditional writes"), "{msg}");
    assert!(msg.contains("If-None-Match"), "{msg}");
    assert!(msg.contains("best_effort=true"), "{msg}");
    // With best_effort the user accepts races: the store opens.
    Store::open(&format!("{loc}&best_effort=true")).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Real processes.

/// Results of 12 MiB: with `multipart_mib=5`, a multipart upload that can be killed midway.
const BIG: usize = 12 << 20;

/// Processes on `location`, waiting up to 120 s for a lease.
fn procs(location: &str) -> Procs {
    Procs::new(location, BIG).wait(Duration::from_secs(120))
}

#[test]
fn child() {
    conformance::processes::child();
}

#[test]
fn eight_processes_racing_on_s3_compute_once() {
    let Some(base) = service() else { return };
    conformance::processes::racing_rounds(&procs(&fresh(&base, "race", "")), 10);
}

#[test]
fn sigkill_of_the_holder_is_taken_over_and_the_entry_completes() {
    let Some(base) = service() else { return };
    // Small parts so that a 12 MiB result is a multipart upload that can be killed midway.
    let p = procs(&fresh(&base, "kill", "&multipart_mib=5"));
    // Kill anywhere from before the lease to after the commit (the upload included).
    conformance::processes::sigkill_rounds(&p, 6, 1500);
    // And once for certain while holding the lease mid-computation: the taker (same host,
    // dead pid) recomputes at once.
    conformance::processes::sigkill_mid_computation(&p, 99);
}

// ---------------------------------------------------------------------------------------------
// The endpoint goes away in the middle of an upload.

/// A TCP proxy in front of the S3 server that can cut every connection after a byte budget
/// (client to server) is spent, then refuse new ones until restored: the server "stops"
/// mid-upload while keeping its state, so the test can check what is visible afterwards.
struct Proxy {
    addr: String,
    down: Arc<AtomicBool>,
    budget: Arc<AtomicI64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap().to_string(),
            down: Arc::new(AtomicBool::new(false)),
            budget: Arc::new(AtomicI64::new(i64::MAX)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (down, budget, conns) = (
            proxy.down.clone(),
            proxy.budget.clone(),
            proxy.conns.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (down, budget, conns) = (down.clone(), budget.clone(), conns.clone());
                std::thread::spawn(move || pipe(client, server, Some((down, budget, conns))));
                std::thread::spawn(move || pipe(s2, c2, None));
            }
        });
        proxy
    }

    /// Lets `bytes` more bytes through to the server, then cuts everything.
    fn cut_after(&self, bytes: i64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.budget.store(i64::MAX, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
    }
}

type Cutter = (Arc<AtomicBool>, Arc<AtomicI64>, Arc<Mutex<Vec<TcpStream>>>);

fn pipe(mut from: TcpStream, mut to: TcpStream, cutter: Option<Cutter>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((down, budget, conns)) = &cutter {
            if down.load(Ordering::SeqCst)
                || budget.fetch_sub(n as i64, Ordering::SeqCst) < n as i64
            {
                down.store(true, Ordering::SeqCst);
                for c in conns.lock().unwrap().drain(..) {
                    let _ = c.shutdown(Shutdown::Both);
                }
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn endpoint_lost_mid_upload_is_a_clear_error_and_the_next_call_recomputes() {
    let Some(base) = service() else { return };
    let proxy = Proxy::start(endpoint_addr(&base));
    let loc = with_endpoint(&fresh(&base, "cut", "&multipart_mib=5"), &proxy.addr);
    let mut options = StoreOptions::default();
    options.lease.ttl = Duration::from_millis(800);
    options.lease.heartbeat_every = Duration::from_millis(200);
    let store = Store::open_with(&loc, options).unwrap();
    let task = store.task("cut");
    let value: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 253) as u8).collect();
    let digest = Digest::of(&value);

    // The upload of the 20 MiB result (4 parts of 5 MiB) is cut after ~7 MiB.
    let err = task
        .get_or_compute_bytes(&1, |_| {
            proxy.cut_after(7 << 20);
            Ok::<_, String>(value.clone())
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("S3"), "{msg}");
    assert!(msg.contains("is reachable"), "{msg}");
    assert!(
        msg.contains(&digest.to_hex()),
        "the message names the object: {msg}"
    );

    // The server comes back: no partial entry or blob is visible.
    proxy.restore();
    assert!(task.entry(&1).unwrap().info().unwrap().is_none());
    assert!(!store.backend().has_blob(&digest).unwrap());
    assert!(store.backend().list_blobs().unwrap().is_empty());
    assert!(store.backend().list_manifests().unwrap().is_empty());

    // The next call recomputes (after the lease that could not be released expires) and
    // commits a whole entry.
    let calls = AtomicUsize::new(0);
    let got = task
        .clone()
        .wait_timeout(Duration::from_secs(60))
        .get_or_compute_bytes(&1, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(value.clone())
        })
        .unwrap();
    assert!(got == value);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        task.entry(&1).unwrap().status().unwrap(),
        Some(Status::Completed)
    );
    let report = store.verify(false, &|_, _, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn large_blobs_round_trip_through_multipart_and_streaming() {
    let Some(base) = service() else { return };
    let store = Store::open(&fresh(&base, "multipart", "&multipart_mib=5")).unwrap();
    let t = store.task("mp");
    let data: Vec<u8> = (0..(13u32 << 20)).map(|i| (i % 241) as u8).collect();
    t.get_or_compute_bytes(&1, |_| Ok::<_, String>(data.clone()))
        .unwrap();
    let again = t
        .get_or_compute_bytes(&1, |_| Err::<Vec<u8>, _>("must hit"))
        .unwrap();
    assert!(again == data);
    let d = Digest::of(&data);
    assert_eq!(
        store.backend().blob_size(&d).unwrap(),
        Some(data.len() as u64)
    );
    let mut reader = store.backend().open_blob(&d).unwrap().unwrap();
    let mut streamed = Vec::new();
    reader.read_to_end(&mut streamed).unwrap();
    assert!(streamed == data);
    // Artifacts go through put_blob_file (multipart from the file when large).
    let v: u8 = t
        .get_or_compute_with(&2, |ctx| {
            fs::write(ctx.artifact_path("big.bin").unwrap(), &data).unwrap();
            Ok::<_, String>(1)
        })
        .unwrap();
    assert_eq!(v, 1);
    assert!(t.entry(&2).unwrap().read_artifact("big.bin").unwrap() == data);
}
