//! `genomamba`: thin entry point; maps the error to a one-line message and an exit code.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => {}
        Err(e) if e.is_broken_pipe() => std::process::exit(0),
        Err(e) => {
            eprintln!("genomamba: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
