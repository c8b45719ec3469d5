//! Running the command: its stdout and stderr go to files (never held in memory) and, as they
//! arrive, to the caller's streams.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use super::{ExitState, RunSpec};
use crate::error::{Error, IoContext, Result};

/// Runs `spec`'s command in its working directory, copying its stdout to `stdout_file` and its
/// stderr to `stderr_file` while forwarding them to `live_out` and `live_err`. Stdin is
/// inherited. The child gets SIGTERM if the thread that started it dies first (a killed
/// `runcache run` never leaves its command running unowned); SIGINT from a terminal reaches it
/// directly, being in the same process group.
pub(crate) fn execute(
    spec: &RunSpec,
    stdout_file: &Path,
    stderr_file: &Path,
    live_out: &mut (dyn Write + Send),
    live_err: &mut (dyn Write + Send),
) -> Result<ExitState> {
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let out_file = File::create(stdout_file).at(stdout_file)?;
    let err_file = File::create(stderr_file).at(stderr_file)?;
    let mut child = cmd.spawn().map_err(|e| {
        Error::Invalid(format!(
            "cannot start `{}`: {e}",
            spec.argv[0].to_string_lossy()
        ))
    })?;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let (out_done, err_done) = std::thread::scope(|s| {
        let a = s.spawn(|| tee(out, out_file, live_out));
        let b = s.spawn(|| tee(err, err_file, live_err));
        (a.join(), b.join())
    });
    let status = child.wait().at(&spec.cwd)?;
    for (done, path) in [(out_done, stdout_file), (err_done, stderr_file)] {
        match done {
            Ok(r) => r.at(path)?,
            Err(_) => return Err(Error::Invalid("the output copying thread panicked".into())),
        }
    }
    Ok(ExitState {
        code: status.code(),
        signal: status.signal(),
    })
}

/// Copies `from` to `file` (which must get every byte) and to `live` (best effort: a closed
/// terminal or pipe does not stop the capture).
fn tee(mut from: impl Read, mut file: File, live: &mut (dyn Write + Send)) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut live_ok = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        file.write_all(&buf[..n])?;
        if live_ok {
            live_ok = live.write_all(&buf[..n]).and_then(|_| live.flush()).is_ok();
        }
    }
    file.flush()
}
