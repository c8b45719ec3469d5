//! `runcache run` with real processes: concurrent invocations, inputs changing, a killed
//! runner, output trees, large binary output, failures, signals and bad input.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A working directory with a store in it and a script that counts its runs.
struct Bench {
    _dir: tempfile::TempDir,
    cwd: PathBuf,
    store: PathBuf,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("work");
        fs::create_dir(&cwd).unwrap();
        let store = dir.path().join("store");
        Bench {
            _dir: dir,
            cwd,
            store,
        }
    }

    /// Writes an executable shell script `name` into the working directory.
    fn script(&self, name: &str, body: &str) {
        let path = self.cwd.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runcache"));
        c.arg("--store")
            .arg(&self.store)
            .arg("run")
            .args(args)
            .current_dir(&self.cwd)
            .env_remove("RUNCACHE_STORE")
            .env("RUST_LOG", "warn");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// How many lines the scripts appended to `runs`.
    fn runs(&self) -> usize {
        fs::read_to_string(self.cwd.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn entries(&self) -> usize {
        if !self.store.exists() {
            return 0;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_runcache"))
            .arg("--store")
            .arg(&self.store)
            .args(["--json", "ls"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().len()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn eight_concurrent_identical_runs_run_the_command_once() {
    let b = Bench::new();
    b.script(
        "slow.sh",
        "echo x >> runs; sleep 1; printf 'result %s\\n' \"$1\"; echo note >&2",
    );
    let children: Vec<Child> = (0..8).map(|_| b.spawn(&["--", "./slow.sh", "a"])).collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert_eq!(b.runs(), 1, "the command ran more than once");
    for o in &outs {
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "result a\n");
        assert_eq!(text(&o.stderr), "note\n");
    }
    assert_eq!(b.entries(), 1);
}

#[test]
fn an_input_changed_by_one_byte_reruns_and_a_touched_one_does_not() {
    let b = Bench::new();
    b.script("cat.sh", "echo x >> runs; cat data.txt");
    fs::write(b.cwd.join("data.txt"), "abc").unwrap();
    let args = ["-i", "data.txt", "--", "./cat.sh"];
    assert_eq!(text(&b.run(&args).stdout), "abc");
    assert_eq!(text(&b.run(&args).stdout), "abc");
    assert_eq!(b.runs(), 1);
    fs::write(b.cwd.join("data.txt"), "abd").unwrap();
    assert_eq!(text(&b.run(&args).stdout), "abd");
    assert_eq!(b.runs(), 2, "a changed input did not rerun the command");
    // Same content, new mtime: a hit (the content is what counts).
    let f = fs::File::options()
        .append(true)
        .open(b.cwd.join("data.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    assert_eq!(text(&b.run(&args).stdout), "abd");
    assert_eq!(
        b.runs(),
        2,
        "a touched but unchanged input reran the command"
    );
    // Globs: a new matching file is a new input.
    fs::create_dir(b.cwd.join("d")).unwrap();
    fs::write(b.cwd.join("d/1.csv"), "1").unwrap();
    let globbed = ["-i", "d/*.csv", "--", "./cat.sh"];
    b.run(&globbed);
    b.run(&globbed);
    assert_eq!(b.runs(), 3);
    fs::write(b.cwd.join("d/2.csv"), "2").unwrap();
    b.run(&globbed);
    assert_eq!(b.runs(), 4, "a new file matching the glob did not rerun");
}

#[test]
fn named_environment_variables_and_arguments_enter_the_key() {
    let b = Bench::new();
    b.script("env.sh", "echo x >> runs; echo \"$SEED $1\"");
    let run = |seed: &str, arg: &str| {
        let o = b
            .command(&["-e", "SEED", "--", "./env.sh", arg])
            .env("SEED", seed)
            .env("UNRELATED", seed)
            .output()
            .unwrap();
        text(&o.stdout)
    };
    assert_eq!(run("1", "a"), "1 a\n");
    assert_eq!(run("1", "a"), "1 a\n");
    assert_eq!(b.runs(), 1);
    assert_eq!(run("2", "a"), "2 a\n");
    assert_eq!(run("2", "b"), "2 b\n");
    assert_eq!(b.runs(), 3);
    // explain names what differs from the nearest stored entry.
    let out = Command::new(env!("CARGO_BIN_EXE_runcache"))
        .arg("--store")
        .arg(&b.store)
        .args(["explain", "-e", "SEED", "--", "./env.sh", "a"])
        .current_dir(&b.cwd)
        .env("SEED", "3")
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        said.contains("miss") && said.contains("args.env.SEED"),
        "{said}"
    );
    assert_eq!(b.runs(), 3, "explain ran the command");
}

#[test]
fn a_killed_runner_is_taken_over_by_a_waiter() {
    let b = Bench::new();
    // The first start hangs (and is killed with its runner); the next one finishes.
    b.script(
        "once.sh",
        "echo $$ >> runs; if [ \"$(wc -l < runs)\" -eq 1 ]; then sleep 60; fi; echo done",
    );
    let mut first = b.spawn(&["--", "./once.sh"]);
    wait_until("the first run starts", || b.runs() == 1);
    let waiter = b.spawn(&["--", "./once.sh"]);
    std::thread::sleep(Duration::from_millis(500));
    first.kill().unwrap(); // SIGKILL: no handler runs, the lease is left behind
    first.wait().unwrap();
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "done\n");
    assert_eq!(b.runs(), 2);
    // The killed runner's command did not outlive it.
    let pid: i32 = fs::read_to_string(b.cwd.join("runs"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    wait_until("the orphaned command ends", || {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) != 0 }
    });
}

/// Every path under `root` with its kind, mode and content (or link target).
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push((
                    rel,
                    format!("link {}", fs::read_link(&p).unwrap().display()),
                ));
            } else if m.is_dir() {
                out.push((rel, format!("dir {mode:o}")));
                walk(root, &p, out);
            } else {
                out.push((
                    rel,
                    format!("file {mode:o} {}", text(&fs::read(&p).unwrap())),
                ));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn an_output_directory_is_restored_exactly() {
    let b = Bench::new();
    b.script(
        "build.sh",
        "echo x >> runs; mkdir -p out/sub out/empty; echo a > out/a.txt; chmod 600 out/a.txt;\
         printf '#!/bin/sh\\n' > out/sub/tool; chmod 755 out/sub/tool; ln -s a.txt out/link;\
         chmod 750 out/sub; echo one > single.txt",
    );
    let args = ["-o", "out", "-o", "single.txt", "--", "./build.sh"];
    assert!(b.run(&args).status.success());
    let want = snapshot(&b.cwd.join("out"));
    assert_eq!(want.len(), 5, "{want:?}");
    // Damage the outputs every way: a file changed, one removed, one added, a mode changed.
    fs::write(b.cwd.join("out/a.txt"), "changed").unwrap();
    fs::remove_file(b.cwd.join("out/link")).unwrap();
    fs::write(b.cwd.join("out/extra"), "x").unwrap();
    fs::set_permissions(b.cwd.join("out/sub"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::remove_file(b.cwd.join("single.txt")).unwrap();
    let o = b.run(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(b.runs(), 1, "the hit reran the command");
    assert_eq!(snapshot(&b.cwd.join("out")), want);
    assert_eq!(
        fs::read_to_string(b.cwd.join("single.txt")).unwrap(),
        "one\n"
    );
    // No temporary names are left beside the outputs.
    let names: Vec<_> = fs::read_dir(&b.cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("runcache-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// Runs `cmd` to completion with stdout to `out`, returning its peak RSS in KiB.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also reports the peak RSS
fn peak_rss_kib(mut cmd: Command, out: &Path) -> (std::process::ExitStatus, i64) {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter; wait4 reaps our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss)
}

#[test]
fn a_large_binary_stdout_is_stored_and_replayed_in_chunks() {
    const SIZE: u64 = 200 << 20;
    let b = Bench::new();
    b.script(
        "big.sh",
        &format!("echo x >> runs; head -c {SIZE} /dev/urandom"),
    );
    let first = b.cwd.join("../first.bin");
    let (status, rss_run) = peak_rss_kib(b.command(&["--", "./big.sh"]), &first);
    assert!(status.success());
    let again = b.cwd.join("../again.bin");
    let (status, rss_replay) = peak_rss_kib(b.command(&["--", "./big.sh"]), &again);
    assert!(status.success());
    assert_eq!(b.runs(), 1);
    assert_eq!(fs::metadata(&again).unwrap().len(), SIZE);
    assert!(
        fs::read(&first).unwrap() == fs::read(&again).unwrap(),
        "the replay differs from the run"
    );
    // Neither process held the output in memory (200 MiB); a few MiB of buffers is expected.
    for (what, kib) in [("run", rss_run), ("replay", rss_replay)] {
        assert!(kib < 64 * 1024, "{what} peaked at {kib} KiB");
    }
}

#[test]
fn a_failing_command_is_replayed_with_its_status_until_retried() {
    let b = Bench::new();
    b.script(
        "fail.sh",
        "echo x >> runs; echo partial; echo 'bad input' >&2; exit 7",
    );
    for _ in 0..2 {
        let o = b.run(&["--", "./fail.sh"]);
        assert_eq!(o.status.code(), Some(7));
        assert_eq!(text(&o.stdout), "partial\n");
        assert_eq!(text(&o.stderr), "bad input\n");
    }
    assert_eq!(b.runs(), 1, "a recorded failure was rerun");
    assert_eq!(
        b.run(&["--retry-failed", "--", "./fail.sh"]).status.code(),
        Some(7)
    );
    assert_eq!(b.runs(), 2);
    // Not cached: every call runs it, nothing is stored for it.
    let args = [
        "--cache-failures",
        "no",
        "--name",
        "uncached",
        "--",
        "./fail.sh",
    ];
    assert_eq!(b.run(&args).status.code(), Some(7));
    assert_eq!(b.run(&args).status.code(), Some(7));
    assert_eq!(b.runs(), 4);
    assert_eq!(b.entries(), 1);
}

#[test]
fn a_terminated_runner_records_the_run_interrupted_and_it_reruns() {
    let b = Bench::new();
    b.script(
        "long.sh",
        "echo $$ >> runs; if [ \"$(wc -l < runs)\" -eq 1 ]; then sleep 60; fi; echo ok",
    );
    let mut first = b.spawn(&["--", "./long.sh"]);
    wait_until("the run starts", || b.runs() == 1);
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    assert!(!status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_runcache"))
        .arg("--store")
        .arg(&b.store)
        .args(["--json", "ls"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["status"], "interrupted", "{v}");
    let o = b.run(&["--", "./long.sh"]);
    assert_eq!(text(&o.stdout), "ok\n");
    assert_eq!(b.runs(), 2);
}

#[test]
fn an_entry_past_its_ttl_is_run_again() {
    let b = Bench::new();
    b.script("now.sh", "echo x >> runs; echo hi");
    b.run(&["--ttl", "1s", "--", "./now.sh"]);
    b.run(&["--ttl", "1s", "--", "./now.sh"]);
    assert_eq!(b.runs(), 1);
    std::thread::sleep(Duration::from_millis(1500));
    let o = b.run(&["--ttl", "1s", "--", "./now.sh"]);
    assert_eq!(text(&o.stdout), "hi\n");
    assert_eq!(b.runs(), 2, "an expired entry was replayed");
    assert_eq!(b.entries(), 1, "the expired entry was not replaced");
    // A recorded failure expires too.
    b.script("fails.sh", "echo x >> runs; exit 5");
    let args = ["--ttl", "1s", "--", "./fails.sh"];
    assert_eq!(b.run(&args).status.code(), Some(5));
    assert_eq!(b.run(&args).status.code(), Some(5));
    assert_eq!(b.runs(), 3, "a fresh failure was rerun");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.run(&args).status.code(), Some(5));
    assert_eq!(b.runs(), 4, "an expired failure was replayed");
}

#[test]
fn bad_input_is_refused_clearly_and_commits_nothing() {
    let b = Bench::new();
    b.script("w.sh", "echo x >> runs; echo hi");
    let cases: [(&[&str], &str); 4] = [
        (
            &["-o", "../outside", "--", "./w.sh"],
            "not inside the working directory",
        ),
        (&["-i", "missing.csv", "--", "./w.sh"], "does not exist"),
        (
            &["-o", "never-written", "--", "./w.sh"],
            "did not write its declared output",
        ),
        (&["--", "./no-such-program"], "does not exist"),
    ];
    for (args, says) in cases {
        let o = b.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = text(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(b.entries(), 0, "a refused run committed an entry");
    // The command whose output was missing ran once; a fixed call runs it again.
    assert_eq!(b.runs(), 1);
    // An unusable store: a regular file where the store should be.
    fs::remove_dir_all(&b.store).unwrap();
    fs::write(&b.store, "not a store").unwrap();
    let o = b.run(&["--", "./w.sh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("opening store"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(b.runs(), 1, "the command ran without a store");
}
