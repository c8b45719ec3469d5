//! Section 8, `runcache ui`: time to first byte of the entries page on the hit bench's store
//! (10^6 entries in a full run), and the load an open sweep page puts on the store (backend
//! requests per second while its live counts are open).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runcache::digest::Digest;
use runcache::lease::LeaseBackend;
use runcache::store::{Backend, BlobInfo, BlobReader, Stray, Watch};
use runcache::{Key, Store, StoreOptions, SweepRecord, SWEEP_FORMAT};

use crate::{median, Report, Res, Rng};

/// Starts a dashboard on `store` in a background thread; returns its address.
fn start(store: Store) -> Res<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let options = runcache_ui::UiOptions {
            port: 0,
            ..Default::default()
        };
        let failed = runcache_ui::serve(store, options, |l| {
            let _ = tx.send(Ok(l.addr));
        });
        if let Err(e) = failed {
            let _ = tx.send(Err(e));
        }
    });
    Ok(rx.recv_timeout(Duration::from_secs(30))??)
}

/// Sends one GET and returns the seconds until the first byte of the answer arrived.
fn first_byte(addr: SocketAddr, path: &str) -> Res<f64> {
    let mut s = TcpStream::connect(addr)?;
    let t0 = Instant::now();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte)?;
    let t = t0.elapsed().as_secs_f64();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    if !rest.starts_with(b"TTP/1.1 200") {
        return Err(format!(
            "GET {path}: {}",
            String::from_utf8_lossy(&rest[..rest.len().min(200)])
        )
        .into());
    }
    Ok(t)
}

/// Adds the dashboard rows. `hits` is the hit bench's store with `entries` entries.
pub fn bench_ui(hits: &Path, entries: usize, scratch: &Path, rep: &mut Report) -> Res<()> {
    let store = Store::open(hits.to_str().ok_or("non-UTF-8 path")?)?;
    let addr = start(store)?;
    let cold = first_byte(addr, "/api/entries?limit=50")?;
    let mut rng = Rng(0x5eed);
    let mut warm: Vec<f64> = (0..20)
        .map(|_| {
            let mut after = [0u8; 32];
            for b in after.iter_mut() {
                *b = rng.next() as u8;
            }
            let path = format!("/api/entries?limit=50&after={}", hex(&after));
            first_byte(addr, &path)
        })
        .collect::<Res<_>>()?;
    let warm = median(&mut warm);
    rep.ratio(
        format!("ui: entries page, first byte, {entries} entries"),
        format!("{:.1} ms", warm * 1e3),
        format!("first request {:.1} ms", cold * 1e3),
        cold / warm,
        "< 200 ms",
        Some(warm.max(cold) < 0.2),
    );
    sweep_load(scratch, rep)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The backend requests per second a sweep page with live counts costs: a 100-item sweep,
/// half of it computed, its event stream read for five seconds.
fn sweep_load(scratch: &Path, rep: &mut Report) -> Res<()> {
    const ITEMS: u64 = 100;
    let dir: PathBuf = scratch.join("ui-sweep");
    let plain = Store::open(dir.to_str().ok_or("non-UTF-8 path")?)?;
    let task = plain.task("bench.ui.sweep");
    let mut keys = Vec::new();
    for i in 0..ITEMS {
        keys.push(task.key(&i)?);
        if i % 2 == 0 {
            let _: u64 = task.get_or_compute(&i, || Ok::<_, String>(i))?;
        }
    }
    let record = SweepRecord {
        format: SWEEP_FORMAT,
        id: "bench-ui-sweep".into(),
        created_unix_ms: 0,
        namespace: "bench.ui.sweep".into(),
        version: String::new(),
        mode: "cached".into(),
        count: ITEMS,
        keys: plain.save_sweep_keys(&keys)?,
        payload: Vec::new(),
        runner: serde_json::Value::Null,
        resources: Default::default(),
        executor: serde_json::Value::Null,
    };
    plain.save_sweep(&record)?;
    let counting = Arc::new(Counting {
        inner: plain.backend().clone(),
        calls: AtomicU64::new(0),
    });
    let store = Store::from_backend(counting.clone(), StoreOptions::default());
    let addr = start(store)?;
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET /api/sweeps/{}/events HTTP/1.1\r\nHost: {addr}\r\n\r\n",
        record.id
    )?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let before = counting.calls.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(5) {
        let _ = s.read(&mut buf);
    }
    let per_s =
        (counting.calls.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    rep.info(
        format!("ui: open sweep page ({ITEMS} items), store load"),
        format!("{per_s:.0} backend requests/s (lease reads not counted)"),
    );
    Ok(())
}

/// A backend that counts the requests made to the one it wraps.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Backend>,
    calls: AtomicU64,
}

impl Counting {
    fn n(&self) -> &dyn Backend {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_ref()
    }
}

type R<T> = runcache::Result<T>;

impl Backend for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn has_blob(&self, d: &Digest) -> R<bool> {
        self.n().has_blob(d)
    }
    fn put_blob(&self, d: &Digest, data: &[u8]) -> R<()> {
        self.n().put_blob(d, data)
    }
    fn put_blob_file(&self, d: &Digest, p: &Path) -> R<()> {
        self.n().put_blob_file(d, p)
    }
    fn open_blob(&self, d: &Digest) -> R<Option<BlobReader>> {
        self.n().open_blob(d)
    }
    fn blob_size(&self, d: &Digest) -> R<Option<u64>> {
        self.n().blob_size(d)
    }
    fn blob_path(&self, d: &Digest) -> Option<PathBuf> {
        self.inner.blob_path(d)
    }
    fn delete_blob(&self, d: &Digest) -> R<()> {
        self.n().delete_blob(d)
    }
    fn list_blobs(&self) -> R<Vec<BlobInfo>> {
        self.n().list_blobs()
    }
    fn put_manifest(&self, k: &Key, b: &[u8], replace: bool) -> R<bool> {
        self.n().put_manifest(k, b, replace)
    }
    fn get_manifest(&self, k: &Key) -> R<Option<Vec<u8>>> {
        self.n().get_manifest(k)
    }
    fn manifest_fingerprint(&self, k: &Key) -> R<Option<[u64; 5]>> {
        self.n().manifest_fingerprint(k)
    }
    fn delete_manifest(&self, k: &Key) -> R<()> {
        self.n().delete_manifest(k)
    }
    fn list_manifests(&self) -> R<Vec<Key>> {
        self.n().list_manifests()
    }
    fn list_manifests_page(&self, after: Option<&Key>, limit: usize) -> R<Vec<Key>> {
        self.n().list_manifests_page(after, limit)
    }
    fn manifest_location(&self, k: &Key) -> String {
        self.inner.manifest_location(k)
    }
    fn touch(&self, k: &Key, unix_ms: u64) -> R<()> {
        self.n().touch(k, unix_ms)
    }
    fn last_used(&self, k: &Key) -> R<Option<u64>> {
        self.n().last_used(k)
    }
    fn forget_usage(&self, k: &Key) -> R<()> {
        self.n().forget_usage(k)
    }
    fn leases(&self) -> Arc<dyn LeaseBackend> {
        self.inner.leases()
    }
    fn put_record(&self, kind: &str, name: &str, b: &[u8]) -> R<()> {
        self.n().put_record(kind, name, b)
    }
    fn get_record(&self, kind: &str, name: &str) -> R<Option<Vec<u8>>> {
        self.n().get_record(kind, name)
    }
    fn list_records(&self, kind: &str) -> R<Vec<String>> {
        self.n().list_records(kind)
    }
    fn delete_record(&self, kind: &str, name: &str) -> R<bool> {
        self.n().delete_record(kind, name)
    }
    fn watch(&self, k: &Key) -> R<Box<dyn Watch>> {
        self.n().watch(k)
    }
    fn scratch_dir(&self) -> PathBuf {
        self.inner.scratch_dir()
    }
    fn strays(&self) -> R<Vec<Stray>> {
        self.n().strays()
    }
    fn remove_stray(&self, s: &Stray) -> R<()> {
        self.n().remove_stray(s)
    }
    fn collect_temp_files(&self, grace: Duration) -> R<(u64, u64)> {
        self.n().collect_temp_files(grace)
    }
}
