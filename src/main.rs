//! `genomamba`: thin entry point; maps the error to a one-line message and an exit code.

mod cli;

use clap::Parser;

fn main() {
    cli::mark("start");
    let cli = cli::Cli::parse();
    #[cfg(feature = "cuda")]
    genomamba::device::enable_kernel_cache();
    match cli::run(cli) {
        Ok(()) => cli::mark("done, exiting"),
        Err(e) if e.is_broken_pipe() => std::process::exit(0),
        Err(e) => {
            eprintln!("genomamba: error: {e}");
            exit_now(e.exit_code());
        }
    }
}

/// Ends the process with `code` without running exit handlers. Everything the command wrote is
/// flushed or removed by the time an error reaches `main`; the handlers would only tear down
/// the CUDA driver while a CubeCL device thread may still be working, which makes that
/// thread panic and print a backtrace after the one-line error.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[cfg(unix)]
    // SAFETY: `_exit` only ends the process; no Rust state is used afterwards.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}
