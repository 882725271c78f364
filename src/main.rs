//! `genomamba`: thin entry point; maps the error to a one-line message and an exit code.

mod cli;

use clap::Parser;

fn main() {
    cli::mark("start");
    let cli = cli::Cli::try_parse_from(negative_values_joined(std::env::args_os()))
        .unwrap_or_else(|e| usage_error(e));
    cli::set_default_device(&cli);
    #[cfg(feature = "cuda")]
    genomamba::device::enable_kernel_cache();
    quiet_out_of_memory_panics();
    remove_unfinished_outputs_on_signals();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cli::run(cli)));
    match run {
        Ok(Ok(())) => {
            cli::mark("done, exiting");
            exit_holding_outputs(0)
        }
        Ok(Err(e)) if e.is_broken_pipe() => exit_holding_outputs(0),
        Ok(Err(e)) => {
            eprintln!(
                "genomamba: error: {}",
                genomamba::error::one_line(&e.to_string())
            );
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

/// Joins a negative number to the long option before it where that option takes a value
/// (`--lr -1e-3` becomes `--lr=-1e-3`). clap takes a number with a signed exponent for a
/// cluster of short flags (`-1`, `-e`, ...) even where negative numbers are allowed, and
/// reported "unexpected argument '-1'"; joined, the value reaches its option, whose own check
/// says what the option takes. After an on/off flag, or after a bare `--`, a number stays an
/// argument of its own (an input file may be named `-7`).
fn negative_values_joined(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let args: Vec<std::ffi::OsString> = args.collect();
    // The long options of the named subcommand (the first argument after the program's
    // name) that take a value.
    let command = cli::Cli::command();
    let valued: Vec<String> = args
        .get(1)
        .and_then(|s| s.to_str())
        .and_then(|s| command.find_subcommand(s))
        .map(|sub| {
            sub.get_arguments()
                .filter(|arg| arg.get_action().takes_values())
                .filter_map(|arg| arg.get_long().map(|l| format!("--{l}")))
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<std::ffi::OsString> = Vec::with_capacity(args.len());
    let mut options_end = false;
    for a in args {
        let number = a
            .to_str()
            .is_some_and(|s| s.starts_with('-') && s.parse::<f64>().is_ok());
        if let Some(prev) = out.last_mut().filter(|_| number && !options_end)
            && prev.to_str().is_some_and(|p| valued.iter().any(|v| v == p))
        {
            prev.push("=");
            prev.push(&a);
            continue;
        }
        options_end |= a == "--";
        out.push(a);
    }
    out
}

/// Reports a command line that clap cannot parse in one line on stderr (what is wrong, then
/// where to read about the options), exit code 2. Help and version requests print as clap
/// prints them.
fn usage_error(e: clap::Error) -> ! {
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let command = cli::Cli::command();
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // `genomamba` alone: one line naming the subcommands, not the whole help.
        let names: Vec<&str> = command
            .get_subcommands()
            .map(|s| s.get_name())
            .filter(|n| *n != "help")
            .collect();
        eprintln!(
            "genomamba: error: no subcommand given; give one of {}; see `genomamba --help`",
            names.join(", ")
        );
        std::process::exit(2);
    }
    if let Some(line) = conflict_with_given(&e) {
        eprintln!(
            "genomamba: error: {line}; see `genomamba{} --help`",
            sub_named(&command)
        );
        std::process::exit(2);
    }
    // clap's text: `error: WHAT` over one or more lines, tips, a blank line, the usage and a
    // pointer to --help.
    let text = e.render().to_string();
    let what = text.split("\n\nUsage:").next().unwrap_or(&text);
    let what = what
        .split("\n\nFor more information")
        .next()
        .unwrap_or(what);
    let mut line = String::new();
    // clap's tip to pass an unknown flag "as a value" after `--` is kept where that names an
    // existing file (an input named `-x.fa`); elsewhere it would make the flag an input path.
    let tip_names_a_file = |l: &str| {
        l.strip_prefix("tip: to pass '")
            .and_then(|rest| rest.split('\'').next())
            .is_some_and(|v| std::path::Path::new(v).exists())
    };
    let lines = what
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && (!l.starts_with("tip: to pass") || tip_names_a_file(l)));
    for l in lines {
        if !line.is_empty() {
            line.push_str(if l.starts_with("tip:") { "; " } else { " " });
        }
        line.push_str(l);
    }
    let what = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!(
        "genomamba: error: {what}; see `genomamba{} --help`",
        sub_named(&command)
    );
    std::process::exit(2);
}

/// ` NAME` for the subcommand the command line names, or nothing.
fn sub_named(command: &clap::Command) -> String {
    std::env::args_os()
        .nth(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| command.get_subcommands().any(|s| s.get_name() == a))
        .map(|a| format!(" {a}"))
        .unwrap_or_default()
}

/// clap's conflict error lists every member of a conflicting group, given or not
/// ("'--class' cannot be used with: --window --bed-class --records ..."). This names only
/// the options the command line gave; `None` for other errors, for an option given twice
/// (which clap reports as a conflict with itself), or where none is found.
fn conflict_with_given(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::ArgumentConflict {
        return None;
    }
    let Some(ContextValue::String(invalid)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let prior: Vec<&String> = match e.get(ContextKind::PriorArg)? {
        ContextValue::Strings(v) => v.iter().collect(),
        ContextValue::String(s) => vec![s],
        _ => return None,
    };
    let flag = |shown: &str| shown.split(' ').next().unwrap_or(shown).to_string();
    let invalid = flag(invalid);
    if prior.iter().any(|p| flag(p) == invalid) {
        return None;
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let given = |long: &str| {
        long.starts_with("--")
            && args
                .iter()
                .take_while(|a| *a != "--")
                .any(|a| a == long || a.starts_with(&format!("{long}=")))
    };
    let named: Vec<String> = prior
        .into_iter()
        .map(|p| flag(p))
        .filter(|p| given(p))
        .collect();
    if named.is_empty() {
        return None;
    }
    Some(format!(
        "{invalid} cannot be used with {}; leave out {invalid}, or {}",
        named.join(", "),
        named.join(" and ")
    ))
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

/// On SIGINT (Ctrl-C), SIGTERM or SIGHUP, removes the temporary files of outputs not yet
/// complete (`genomamba::io::output::remove_pending`), says so in one line and ends the process
/// with the shell's code for that signal (128 + its number: 130 for Ctrl-C). Outputs already
/// in place stay: they are whole. Without this, the signal's default action ended the process
/// at once and left the temporary files (hidden, and as large as the output so far) behind.
fn remove_unfinished_outputs_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // If the handlers cannot be installed, the signals keep their default action.
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = match signal {
                SIGINT => "SIGINT",
                SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
            genomamba::io::output::remove_pending(|removed| {
                // Start on a clean line: a progress bar may be half drawn on a terminal.
                use std::io::IsTerminal;
                let clear = if std::io::stderr().is_terminal() {
                    "\r\x1b[2K"
                } else {
                    ""
                };
                let what = match removed {
                    0 => String::new(),
                    1 => "; removed 1 unfinished output file".into(),
                    n => format!("; removed {n} unfinished output files"),
                };
                let hint = cli::interrupted_hint()
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default();
                eprintln!("{clear}genomamba: interrupted by {name}{what}{hint}");
                exit_now(128 + signal)
            })
        }
    });
}

/// The system's allocator, except that an allocation the machine cannot satisfy ends the
/// process like any other error: one line on stderr, the temporary outputs removed, exit
/// code 2 (as for a GPU out of memory). Rust's own handling aborts with a backtrace and
/// leaves the temporary files behind.
struct ReportingAllocator;

// SAFETY: every call is passed to `System` unchanged; only a null result is acted on, and
// the pointer handed back is the one `System` gave.
unsafe impl std::alloc::GlobalAlloc for ReportingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on.
        reported(unsafe { std::alloc::System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        reported(
            unsafe { std::alloc::System.alloc_zeroed(layout) },
            layout.size(),
        )
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        reported(
            unsafe { std::alloc::System.realloc(ptr, layout, size) },
            size,
        )
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: ReportingAllocator = ReportingAllocator;

/// `p`, the result of an allocation of `size` bytes; ends the process if it failed (null).
fn reported(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        out_of_host_memory(size);
    }
    p
}

/// Ends the process after an allocation of `size` bytes failed: removes the temporary outputs,
/// prints one line and exits with code 2, still holding the list of outputs (as on a signal:
/// nothing can be published after the removal). Formats on the stack, since the heap just
/// failed. Returns only when called again while doing so (an allocation inside the removal
/// failed too); Rust's own handling then aborts.
fn out_of_host_memory(size: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static REPORTING: AtomicBool = AtomicBool::new(false);
    if REPORTING.swap(true, Ordering::SeqCst) {
        return;
    }
    genomamba::io::output::try_remove_pending(|removed| report_out_of_memory(size, removed))
}

/// Prints the one line of [`out_of_host_memory`] and exits with code 2.
fn report_out_of_memory(size: usize, removed: Option<usize>) -> ! {
    let mut line = StackText::<512>::new();
    use std::fmt::Write as _;
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        // A progress bar may be half drawn.
        line.push("\r\x1b[2K");
    }
    let _ = write!(
        line,
        "genomamba: error: the machine ran out of memory (an allocation of "
    );
    let _ = match size {
        s if s >= 1 << 30 => write!(line, "{:.1} GiB", s as f64 / (1u64 << 30) as f64),
        s if s >= 1 << 20 => write!(line, "{:.1} MiB", s as f64 / (1u64 << 20) as f64),
        s => write!(line, "{s} bytes"),
    };
    let _ = writeln!(
        line,
        " failed){}; use a smaller --chunk-size (embed, classify, annotate) or --batch-size or \
         --window (train), or a smaller model",
        match removed {
            Some(0) | None => "",
            Some(1) => "; removed 1 unfinished output file",
            Some(_) => "; removed the unfinished output files",
        }
    );
    // SAFETY: writes the bytes of a live buffer to the standard error descriptor.
    unsafe {
        libc::write(2, line.bytes().as_ptr().cast(), line.bytes().len());
    }
    exit_now(2)
}

/// Text formatted into a fixed buffer, cut at its capacity.
struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, s: &str) {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s);
        Ok(())
    }
}

/// Ends a run that has finished (or whose reader has gone) with `code`, holding the list of
/// pending outputs (anything still on it removed), so that a signal arriving now waits for
/// the end instead of printing "interrupted" as the process exits 0.
fn exit_holding_outputs(code: i32) -> ! {
    genomamba::io::output::remove_pending(|_| exit_now(code))
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
