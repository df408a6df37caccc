//! The `larder` command: Nix's build core, rewritten to be deadlock-free.
//!
//! Each subcommand lives in its own module under [`cmd`]; this file only
//! parses the command line, sets up diagnostics and turns errors into one
//! line on standard error and an exit status.

#![allow(clippy::print_stderr)]

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Nix's build core, deadlock-free: store paths, NAR, derivations and builds.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: cmd::GlobalArgs,
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // `--help` and `--version` are not errors.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // Bad usage is bad input like any other: one line, status 1.
            let rendered = error.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{} (see 'larder --help')", escape_controls(first));
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.run(&cli.global) {
        Ok(code) => code,
        Err(error) if is_broken_pipe(&error) => {
            // The reader went away (`larder ... | head`): nothing is wrong.
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, outermost first, as Nix prints its
/// errors. A cause whose text its parent already shows is left out, since
/// some errors spell their source in their own message. Control characters
/// (a newline inside a quoted environment value, say) are escaped, so that
/// the message stays one line whatever the input held.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut shown = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if shown.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        shown = text;
    }
    escape_controls(&line)
}

/// `text` with each control character written as a Rust escape (`\n`,
/// `\u{1b}`), so that it prints as one line and cannot drive the terminal.
fn escape_controls(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
