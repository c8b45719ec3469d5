//! Who we are (host, boot id, pid, process start) and whether a same-host process still lives.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The identity a lease holder writes into its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Host name.
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` ("" if unknown).
    pub boot_id: String,
    /// Our process id.
    pub pid: u32,
    /// Our start time in clock ticks since boot (field 22 of `/proc/self/stat`; 0 if unknown).
    pub process_start: u64,
}

/// This process's identity (computed once).
pub(crate) fn current() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        Identity {
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            pid,
            process_start: read_stat(pid).ok().flatten().map(|s| s.start).unwrap_or(0),
        }
    })
}

/// The two fields of `/proc/<pid>/stat` we need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: process state (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

/// Parses the contents of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted after the LAST `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `fields` now starts at field 4; field 22 is 18 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start })
}

/// Reads `/proc/<pid>/stat`: `Ok(None)` if there is no such process.
pub(crate) fn read_stat(pid: u32) -> Result<Option<ProcStat>> {
    let path = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| Error::Malformed {
            what: "process status",
            path,
            message: "cannot find the state and start-time fields".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Whether the process `pid` that started at `start` (clock ticks since boot) still runs on THIS
/// machine. `None` when it cannot be told (no /proc, unknown start time): the caller must then
/// fall back to watching heartbeats. A zombie counts as dead: it will never beat again.
pub(crate) fn process_alive(pid: u32, start: u64) -> Option<bool> {
    if start == 0 || pid == 0 {
        return None;
    }
    match read_stat(pid) {
        Ok(None) => Some(false),
        Ok(Some(stat)) => Some(stat.start == start && !matches!(stat.state, 'Z' | 'X' | 'x')),
        Err(_) => None,
    }
}

/// Whether some process `pid` runs on this machine now (a zombie does not). When it cannot be
/// told, true: callers use it to keep what a live process may still use.
pub(crate) fn pid_running(pid: u32) -> bool {
    match read_stat(pid) {
        Ok(None) => false,
        Ok(Some(stat)) => !matches!(stat.state, 'Z' | 'X' | 'x'),
        Err(_) => true,
    }
}

/// A fresh random hex string of `bytes` random bytes (getrandom).
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| {
        Error::io(
            "getrandom",
            std::io::Error::other(format!("no randomness: {e}")),
        )
    })?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn knows_itself_alive_and_a_reaped_child_dead() {
        let me = current();
        assert!(me.process_start > 0);
        assert!(!me.host.is_empty());
        assert_eq!(process_alive(me.pid, me.process_start), Some(true));
        assert_eq!(process_alive(me.pid, me.process_start + 1), Some(false));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = read_stat(pid).unwrap().map(|s| s.start).unwrap_or(1);
        child.wait().unwrap();
        assert_eq!(process_alive(pid, start), Some(false));
    }
}
