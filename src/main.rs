//! `genomamba`: thin entry point; maps the error to a one-line message and an exit code.

mod cli;

use clap::Parser;

fn main() {
    cli::mark("start");
    let cli = cli::Cli::parse();
    #[cfg(feature = "cuda")]
    genomamba::device::enable_kernel_cache();
    quiet_out_of_memory_panics();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cli::run(cli)));
    match run {
        Ok(Ok(())) => cli::mark("done, exiting"),
        Ok(Err(e)) if e.is_broken_pipe() => std::process::exit(0),
        Ok(Err(e)) => {
            eprintln!("genomamba: error: {e}");
            exit_now(e.exit_code());
        }
        Err(payload) => match OUT_OF_MEMORY.get() {
            // Unwinding has removed the temporary outputs by now.
            Some(e) => {
                eprintln!("genomamba: error: {e}");
                exit_now(e.exit_code());
            }
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// The first panic, on any thread, that was the GPU running out of memory
/// ([`genomamba::device::out_of_memory`]).
static OUT_OF_MEMORY: std::sync::OnceLock<genomamba::Error> = std::sync::OnceLock::new();

/// Keeps a GPU's out-of-memory panic (Burn's CUDA backend panics when an allocation fails) from
/// printing its page of causes and backtrace: it is kept in [`OUT_OF_MEMORY`] and `main`
/// reports it as one line once the main thread has unwound. Every other panic prints as usual.
fn quiet_out_of_memory_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        match text.and_then(genomamba::device::out_of_memory) {
            Some(e) => {
                let _ = OUT_OF_MEMORY.set(e);
            }
            None if OUT_OF_MEMORY.get().is_some() => {}
            None => default(info),
        }
    }));
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
