//! One function per subcommand: open the store, call the engine, print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use runcache::store::Stray;
use runcache::{EntryInfo, GcOptions, Status, Store};
use serde_json::json;

use crate::format::{age, size, table};
use crate::{Cli, Command};

/// Runs the parsed command; returns the exit code.
pub fn run(cli: &Cli) -> Result<i32> {
    if let Command::Init {
        path,
        shared,
        file_mode,
    } = &cli.command
    {
        return init(cli, path.as_deref(), shared.as_deref(), *file_mode);
    }
    if let Command::Worker { args } = &cli.command {
        return crate::sweeps::worker(&cli.store, args);
    }
    match &cli.command {
        Command::Run(args) => return crate::run::run(&cli.store, args),
        Command::Explain(args) => return crate::run::explain(&cli.store, cli.json, args),
        Command::Ui {
            port,
            bind,
            token,
            allow_write,
            open: open_page,
        } => {
            let options = runcache_ui::UiOptions {
                bind: *bind,
                port: *port,
                token: token.clone(),
                allow_write: *allow_write,
            };
            return ui(&cli.store, options, *open_page);
        }
        _ => {}
    }
    let store = open(&cli.store)?;
    match &cli.command {
        Command::Init { .. }
        | Command::Worker { .. }
        | Command::Run(_)
        | Command::Explain(_)
        | Command::Ui { .. } => {
            unreachable!("handled above")
        }
        Command::Ls {
            namespace,
            namespaces,
            failed,
        } => ls(cli, &store, namespace.as_deref(), *namespaces, *failed),
        Command::Show { key } => show(cli, &store, key),
        Command::Rm {
            keys,
            namespace,
            failed,
            dry_run,
        } => rm(cli, &store, keys, namespace.as_deref(), *failed, *dry_run),
        Command::Gc {
            max_size,
            older_than,
            min_idle,
            dry_run,
        } => gc(
            cli,
            &store,
            GcOptions {
                max_size: *max_size,
                older_than: *older_than,
                min_idle: *min_idle,
                dry_run: *dry_run,
                ..GcOptions::default()
            },
        ),
        Command::Verify { repair } => verify(cli, &store, *repair),
        Command::Du => du(cli, &store),
        Command::Leases => leases(cli, &store),
        Command::Status { sweep } => crate::sweeps::status(cli, &store, sweep.as_deref()),
        Command::Logs { key } => crate::sweeps::logs(&store, key),
    }
}

/// `runcache ui`: serves the dashboard until interrupted.
fn ui(location: &str, options: runcache_ui::UiOptions, open_page: bool) -> Result<i32> {
    let store = open(location)?;
    runcache_ui::serve(store, options, |l| {
        // The URL line is the first line of stdout (scripts and `rc.ui()` read it).
        println!("runcache ui: serving {} at {}", location, l.url);
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if open_page {
            let opened = std::process::Command::new("xdg-open")
                .arg(&l.url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            if opened.is_err() {
                eprintln!("runcache ui: could not start a browser (xdg-open); open the URL above");
            }
        }
    })
    .map_err(anyhow::Error::msg)?;
    Ok(0)
}

/// Opens an existing store; a missing local directory is an error, not a new empty store.
pub(crate) fn open(location: &str) -> Result<Store> {
    let is_path = !location.contains("://");
    let path = location.split('?').next().unwrap_or(location);
    if is_path && !std::path::Path::new(path).exists() {
        bail!(
            "no store at `{location}`: give --store PATH (or set RUNCACHE_STORE) to an existing runcache store. To create one, run `runcache init {path}`; the first cached call made with this store location also creates it"
        );
    }
    Store::open(location).with_context(|| format!("opening store `{location}`"))
}

/// `runcache init [--shared GROUP] PATH`.
fn init(cli: &Cli, path: Option<&Path>, group: Option<&str>, file_mode: u32) -> Result<i32> {
    use runcache::store::local::init_store;
    use runcache::store::sharing::{apply_to_tree, resolve_group, Sharing};

    let root: PathBuf = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let loc = cli.store.split('?').next().unwrap_or(&cli.store);
            if let Some(p) = loc.strip_prefix("file://") {
                PathBuf::from(p)
            } else if loc.contains("://") {
                bail!(
                    "`runcache init` prepares a local or shared-filesystem directory; `{loc}` is created on first use (give a PATH)"
                );
            } else {
                PathBuf::from(loc)
            }
        }
    };
    let sharing = match group {
        None => None,
        Some(g) => Some((g, Sharing::new(resolve_group(g)?, file_mode))),
    };
    let existed = root.join(runcache::store::local::MARKER_FILE).exists();
    init_store(&root, sharing).with_context(|| format!("initializing {}", root.display()))?;
    let report = sharing.map(|(_, s)| apply_to_tree(&root, &s));
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "path": root.display().to_string(),
                "created": !existed,
                "shared_group": sharing.map(|(g, _)| g),
                "shared_gid": sharing.map(|(_, s)| s.gid),
                "file_mode": sharing.map(|(_, s)| format!("{:04o}", s.file_mode)),
                "dir_mode": sharing.map(|(_, s)| format!("{:04o}", s.dir_mode)),
                "paths_changed": report.as_ref().map(|r| r.changed),
                "paths_failed": report.as_ref().map(|r| r.failed.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>()),
            }))?
        );
    } else {
        println!(
            "{} store at {}",
            if existed { "existing" } else { "created" },
            root.display()
        );
        if let (Some((g, s)), Some(r)) = (sharing, &report) {
            println!(
                "shared with group {g} (gid {}): files {:04o}, directories {:04o} (setgid); {} paths updated",
                s.gid, s.file_mode, s.dir_mode, r.changed
            );
        }
    }
    if let Some(r) = report.filter(|r| !r.failed.is_empty()) {
        for (p, e) in r.failed.iter().take(10) {
            eprintln!("runcache: could not share {p}: {e}");
        }
        bail!(
            "{} paths could not be given the group and modes (owned by other users, or you are not a member of the group); have their owners (or root) run the same `runcache init --shared` command",
            r.failed.len()
        );
    }
    Ok(0)
}

fn progress_bar(enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Names each damaged object on stderr with what to do about it.
pub(crate) fn warn_damaged(objects: &[Stray]) {
    for s in objects {
        eprintln!(
            "runcache: damaged object {}: {}; `runcache verify --repair` removes it",
            s.location, s.problem
        );
    }
}

/// Names each damaged entry on stderr with what to do about it.
pub(crate) fn warn_damaged_entries(entries: &[runcache::VerifyProblem]) {
    for e in entries {
        eprintln!(
            "runcache: damaged entry {}: {}; `runcache verify --repair` removes it",
            e.key, e.problem
        );
    }
}

/// Lists the store's damaged objects and names them on stderr.
pub(crate) fn damaged_objects(store: &Store) -> Result<Vec<Stray>> {
    let objects = store.backend().strays()?;
    warn_damaged(&objects);
    Ok(objects)
}

fn status_of(e: &EntryInfo) -> &'static str {
    e.manifest.as_ref().map_or("damaged", |m| m.status.as_str())
}

fn namespace_of(e: &EntryInfo) -> &str {
    e.manifest
        .as_ref()
        .map_or("(damaged)", |m| m.namespace.as_str())
}

fn ls(
    cli: &Cli,
    store: &Store,
    namespace: Option<&str>,
    per_namespace: bool,
    failed: bool,
) -> Result<i32> {
    let entries: Vec<EntryInfo> = store
        .entries()?
        .into_iter()
        .filter(|e| namespace.is_none_or(|ns| namespace_of(e) == ns))
        .filter(|e| !failed || status_of(e) != Status::Completed.as_str())
        .collect();
    damaged_objects(store)?;
    let damaged: Vec<_> = entries.iter().filter_map(EntryInfo::damaged).collect();
    warn_damaged_entries(&damaged);
    if per_namespace {
        let mut sums: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for e in &entries {
            let s = sums.entry(namespace_of(e).to_string()).or_default();
            s.0 += 1;
            s.1 =
                s.1.saturating_add(e.manifest.as_ref().map_or(0, |m| m.total_size()));
            s.2 = s.2.max(e.last_used_unix_ms);
        }
        if cli.json {
            let v: Vec<_> = sums
                .iter()
                .map(|(ns, (n, b, u))| json!({"namespace": ns, "entries": n, "bytes": b, "last_used_unix_ms": u}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            let rows: Vec<Vec<String>> = sums
                .iter()
                .map(|(ns, (n, b, u))| vec![ns.clone(), n.to_string(), size(*b), age(*u)])
                .collect();
            table(&["NAMESPACE", "ENTRIES", "SIZE", "LAST USED"], &rows);
        }
        return Ok(0);
    }
    if cli.json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "key": e.key.to_hex(),
                    "namespace": namespace_of(e),
                    "version": e.manifest.as_ref().map(|m| m.version.clone()),
                    "status": status_of(e),
                    "bytes": e.manifest.as_ref().map_or(0, |m| m.total_size()),
                    "created_unix_ms": e.manifest.as_ref().map(|m| m.created_unix_ms),
                    "last_used_unix_ms": e.last_used_unix_ms,
                    "damage": e.damage,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    e.key.to_hex()[..12].to_string(),
                    namespace_of(e).to_string(),
                    e.manifest
                        .as_ref()
                        .map_or("-".into(), |m| m.version.clone()),
                    status_of(e).to_string(),
                    e.manifest
                        .as_ref()
                        .map_or("?".into(), |m| size(m.total_size())),
                    e.manifest
                        .as_ref()
                        .map_or("?".into(), |m| age(m.created_unix_ms)),
                    if e.manifest.is_some() {
                        age(e.last_used_unix_ms)
                    } else {
                        "?".into()
                    },
                ]
            })
            .collect();
        table(
            &[
                "KEY",
                "NAMESPACE",
                "VERSION",
                "STATUS",
                "SIZE",
                "CREATED",
                "LAST USED",
            ],
            &rows,
        );
        eprintln!("{} entries in {}", entries.len(), store.location());
    }
    Ok(0)
}

fn show(cli: &Cli, store: &Store, key: &str) -> Result<i32> {
    let key = store.resolve_prefix(key)?;
    let m = match store.manifest(&key) {
        Ok(m) => m.with_context(|| format!("entry {key} vanished"))?,
        Err(e) if e.is_object_damage() => {
            if cli.json {
                println!("{}", json!({"key": key.to_hex(), "damage": e.to_string()}));
            } else {
                println!("DAMAGED {key}: {e}");
            }
            return Ok(3);
        }
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(0);
    }
    println!("key        {}", m.key);
    println!("namespace  {}", m.namespace);
    println!("version    {}", m.version);
    println!("status     {}", m.status.as_str());
    println!(
        "created    {} by pid {} on {}",
        age(m.created_unix_ms),
        m.pid,
        m.host
    );
    println!("duration   {:.3} s", m.duration_s);
    println!("encoding   {}", m.encoding);
    if let Some(err) = &m.error {
        println!("error      {}: {}", err.error_type, err.message);
        if !err.traceback.is_empty() {
            println!("{}", err.traceback);
        }
    }
    println!("key document:");
    for line in serde_json::to_string_pretty(&m.key_doc)?.lines() {
        println!("  {line}");
    }
    println!("blobs:");
    for b in &m.blobs {
        let place = if b.inline.is_some() { " (inline)" } else { "" };
        println!("  {:<10} {} {}{place}", b.role, b.digest, size(b.size));
    }
    if !m.artifacts.is_empty() {
        println!("artifacts:");
        for a in &m.artifacts {
            println!("  {:<20} {} {}", a.name, a.digest, size(a.size));
        }
    }
    if !m.dependencies.is_empty() {
        println!("dependencies:");
        for d in &m.dependencies {
            println!("  {} v{} {}", d.namespace, d.version, d.key);
        }
    }
    if !m.metadata.is_empty() {
        println!("metadata:");
        for (k, v) in &m.metadata {
            println!("  {k} = {v}");
        }
    }
    Ok(0)
}

fn rm(
    cli: &Cli,
    store: &Store,
    keys: &[String],
    namespace: Option<&str>,
    failed: bool,
    dry_run: bool,
) -> Result<i32> {
    if keys.is_empty() && namespace.is_none() && !failed {
        bail!("say what to remove: KEY..., --namespace NS, or --failed");
    }
    let mut targets = Vec::new();
    for k in keys {
        targets.push(store.resolve_prefix(k)?);
    }
    if namespace.is_some() || failed {
        for e in store.entries()? {
            let ns_ok = namespace.is_none_or(|ns| namespace_of(&e) == ns);
            let failed_ok = !failed || status_of(&e) != Status::Completed.as_str();
            if ns_ok && failed_ok {
                targets.push(e.key);
            }
        }
    }
    targets.sort();
    targets.dedup();
    if !dry_run {
        for k in &targets {
            store.delete(k)?;
        }
    }
    let (blobs, bytes) = if dry_run {
        (0, 0)
    } else {
        store.remove_unreferenced_blobs(GcOptions::default().blob_grace)?
    };
    if cli.json {
        let keys: Vec<String> = targets.iter().map(|k| k.to_hex()).collect();
        println!(
            "{}",
            json!({"removed": keys, "dry_run": dry_run, "blobs_removed": blobs, "bytes_freed": bytes})
        );
    } else {
        for k in &targets {
            println!("{} {k}", if dry_run { "would remove" } else { "removed" });
        }
        println!(
            "{} {} entries; freed {} in {blobs} blobs",
            if dry_run { "would remove" } else { "removed" },
            targets.len(),
            size(bytes)
        );
    }
    Ok(0)
}

fn gc(cli: &Cli, store: &Store, options: GcOptions) -> Result<i32> {
    if options.max_size.is_none() && options.older_than.is_none() {
        bail!("give --max-size SIZE and/or --older-than AGE (e.g. `runcache gc --max-size 20G --older-than 30d`)");
    }
    let bar = progress_bar(!cli.json);
    let report = store.gc(&options, &|done, total, msg| {
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(msg.to_string());
    })?;
    bar.finish_and_clear();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if report.dry_run {
            "would evict"
        } else {
            "evicted"
        };
        for (k, ns, bytes) in &report.removed {
            let shown = if ns == "(damaged)" {
                "damaged".into()
            } else {
                size(*bytes)
            };
            println!("{verb} {k} {ns} {shown}");
        }
        for (k, why) in &report.errors {
            eprintln!("runcache: could not evict {k}: {why}");
        }
        warn_damaged(&report.damaged_objects);
        warn_damaged_entries(&report.damaged_entries);
        if report.temp_files_removed > 0 {
            println!(
                "removed {} temporary files of killed writers ({})",
                report.temp_files_removed,
                size(report.temp_bytes_freed)
            );
        }
        println!(
            "{verb} {} entries, {} unreferenced blobs ({}); {} protected (in use or being computed); {} remain",
            report.removed.len(),
            report.blobs_removed,
            size(report.bytes_freed),
            report.protected,
            size(report.bytes_remaining)
        );
    }
    Ok(0)
}

fn verify(cli: &Cli, store: &Store, repair: bool) -> Result<i32> {
    let bar = progress_bar(!cli.json);
    let report = store.verify(repair, &|done, total, msg| {
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(msg.to_string());
    })?;
    bar.finish_and_clear();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            println!(
                "DAMAGED {} {}: {}",
                p.key,
                p.namespace.as_deref().unwrap_or("(unknown namespace)"),
                p.problem
            );
        }
        for o in &report.damaged_objects {
            println!("DAMAGED {}: {}", o.location, o.problem);
        }
        println!(
            "checked {} entries, {} blobs, {}; {} damaged entries, {} damaged objects{}",
            report.entries,
            report.blobs,
            size(report.bytes),
            report.problems.len(),
            report.damaged_objects.len(),
            if repair {
                format!(
                    "; removed {} entries, {} objects, {} temporary files",
                    report.removed, report.damaged_objects_removed, report.temp_files_removed
                )
            } else if !report.found_damage() {
                String::new()
            } else {
                " (run `runcache verify --repair` to remove them)".into()
            }
        );
    }
    Ok(if !report.found_damage() || repair {
        0
    } else {
        3
    })
}

fn du(cli: &Cli, store: &Store) -> Result<i32> {
    let u = store.usage()?;
    warn_damaged(&u.damaged_objects);
    warn_damaged_entries(&u.damaged_entries);
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&u)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = u
        .namespaces
        .iter()
        .map(|(ns, n)| {
            vec![
                ns.clone(),
                n.entries.to_string(),
                n.failed.to_string(),
                if ns == "(damaged)" {
                    "?".into()
                } else {
                    size(n.bytes)
                },
            ]
        })
        .collect();
    table(&["NAMESPACE", "ENTRIES", "FAILED", "SIZE"], &rows);
    println!(
        "total: {} entries, {} blobs, {} on disk in {}",
        u.entries,
        u.blobs,
        size(u.blob_bytes),
        store.location()
    );
    Ok(0)
}

fn leases(cli: &Cli, store: &Store) -> Result<i32> {
    let views = store.leases().list()?;
    damaged_objects(store)?;
    let held: Vec<_> = views.iter().filter(|v| v.record.is_some()).collect();
    if cli.json {
        let v: Vec<_> = held
            .iter()
            .map(|v| {
                let r = v.record.as_ref().expect("filtered");
                json!({
                    "key": v.key.to_hex(),
                    "namespace": r.namespace,
                    "generation": r.generation,
                    "host": r.host,
                    "pid": r.pid,
                    "acquired_unix_ms": r.acquired_unix_ms,
                    "alive": v.alive,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = held
        .iter()
        .map(|v| {
            let r = v.record.as_ref().expect("filtered");
            vec![
                v.key.to_hex()[..12].to_string(),
                r.namespace.clone(),
                r.generation.to_string(),
                format!("{}:{}", r.host, r.pid),
                age(r.acquired_unix_ms),
                match v.alive {
                    Some(true) => "alive".into(),
                    Some(false) => "dead".into(),
                    None => "unknown (watching)".into(),
                },
            ]
        })
        .collect();
    table(
        &["KEY", "NAMESPACE", "GEN", "HOLDER", "SINCE", "STATE"],
        &rows,
    );
    Ok(0)
}
