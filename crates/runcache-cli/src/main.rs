//! The `runcache` command (see the library, [`runcache_cli::run`]).

fn main() {
    std::process::exit(runcache_cli::run(std::env::args_os()));
}
