//! The `rekey` binary: parse the command line, run the command, map the outcome to
//! an exit code in one place.

use clap::Parser;
use rekey::cli::{Cli, Color, Command};
use rekey::{ExitStatus, commands, env_vars};
use std::io::IsTerminal;

fn main() -> std::process::ExitCode {
    rekey::harden::process();
    let cli = Cli::parse();
    // Still the only thread: the secret variables rekey itself reads leave the
    // environment now (those a playbook names, once it is loaded).
    rekey::harden::take_env(env_vars::SECRETS.iter().copied());
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os(env_vars::NO_COLOR).is_none_or(|v| v.is_empty())
        }
    };
    init_logging(&cli, color);
    if let Some(dir) = &cli.providers {
        rekey::provider::catalog::use_directory(dir.clone());
    }
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let mut io = commands::Io {
        stdout: &mut stdout,
        stderr: &mut stderr,
        color,
    };
    let result = match &cli.command {
        Command::Plan(args) => commands::plan(args, &mut io),
        Command::Run(args) => commands::run(args, &mut io),
        Command::Resume(args) => commands::resume(args, &mut io),
        Command::Rollback(args) => commands::rollback(args, &mut io),
        Command::Status(args) => commands::status(args, &mut io),
        Command::Schema => commands::schema(&mut io),
        Command::Providers(args) => commands::providers(args, &mut io),
        Command::Audit(cmd) => commands::audit(cmd, &mut io),
    };
    let status = match result {
        Ok(status) => status,
        Err(err) => {
            // A closed pipe (`rekey plan ... | head`) is not a failure worth a message.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitStatus::Failure
        }
    };
    std::process::ExitCode::from(status.code())
}

fn init_logging(cli: &Cli, color: bool) {
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "debug",
            _ => "trace",
        }
    };
    rekey::logging::init(level, color);
}
