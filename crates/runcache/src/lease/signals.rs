//! SIGINT/SIGTERM: release every held lease, then die of the signal.
//!
//! The first time a lease is won, a process-wide signal-hook iterator thread is started for
//! SIGINT and SIGTERM. When a signal arrives it runs, for each lease this process holds, the
//! guard's interrupt hook (the engine records the entry as "interrupted", not failed) and then
//! releases the lease (ownership-checked). This is why waiters get an immediate handover when a
//! holder is stopped with Ctrl-C or `kill`/`scancel` (SIGTERM): the lease becomes free at once,
//! instead of after a TTL without heartbeats. Finally the process terminates the way the default
//! handler would (`emulate_default_handler`), so its exit status still says "killed by SIGTERM".
//! With no lease held the signal simply has its default effect.
//!
//! SIGKILL cannot be caught: a SIGKILLed holder's lease is taken over by liveness judgement
//! (immediately on the same host, after one TTL without heartbeats elsewhere).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns off runcache's SIGINT/SIGTERM handling for this process, for hosts that handle signals
/// themselves (the Python extension turns them into exceptions, records the entry as interrupted
/// and releases the lease on the way out). Call it before the first lease is taken.
pub fn disable_signal_handling() {
    DISABLED.store(true, Ordering::SeqCst);
}

/// Installs the handling once per process. Failure to install is logged, not fatal: leases then
/// fall back to TTL-based takeover.
pub(crate) fn install() {
    if DISABLED.load(Ordering::SeqCst) {
        return;
    }
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let mut signals = match Signals::new([SIGINT, SIGTERM]) {
            Ok(signals) => signals,
            Err(e) => {
                log::warn!("cannot install SIGINT/SIGTERM handling for leases: {e}");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("runcache-signals".into())
            .spawn(move || {
                let mut first = true;
                for signal in signals.forever() {
                    if first {
                        first = false;
                        // Hooks and releases run on their own thread so that a second signal
                        // (an impatient second Ctrl-C) still terminates at once.
                        std::thread::spawn(move || on_signal(signal));
                    } else {
                        die_of(signal);
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the runcache signal thread: {e}");
        }
    });
}

fn on_signal(signal: i32) {
    for held in super::heartbeat::live() {
        held.run_hook();
        match held.release() {
            Ok(true) => log::info!("released the lease on {} on signal {signal}", held.key),
            Ok(false) => {}
            Err(e) => log::warn!("could not release the lease on {}: {e}", held.key),
        }
    }
    die_of(signal);
}

/// Terminates the process as the default disposition of `signal` would.
fn die_of(signal: i32) -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    // emulate_default_handler aborts if re-raising failed; never continue normally.
    signal_hook::low_level::exit(128 + signal)
}
