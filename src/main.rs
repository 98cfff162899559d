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
                && env_vars::get_os(env_vars::NO_COLOR).is_none_or(|v| v.is_empty())
        }
    };
    init_logging(&cli, color);
    // Not locked for the whole command: credentials run on the runtime's worker
    // threads, and `--audit-sink stdout` writes its lines from there.
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut io = commands::Io {
        stdout: &mut stdout,
        stderr: &mut stderr,
        color,
    };
    // The provider catalog (the shipped files and those of `--providers DIR`),
    // read once, here, for the commands that use it.
    let catalog = || commands::load_catalog(cli.providers.as_deref());
    let result = match &cli.command {
        Command::Plan(args) => catalog().and_then(|c| commands::plan(args, &c, &mut io)),
        Command::Run(args) => catalog().and_then(|c| commands::run(args, &c, &mut io)),
        Command::Resume(args) => catalog().and_then(|c| commands::resume(args, &c, &mut io)),
        Command::Rollback(args) => catalog().and_then(|c| commands::rollback(args, &c, &mut io)),
        Command::Status(args) => commands::status(args, &mut io),
        Command::Runner(args) => catalog().and_then(|c| commands::runner(args, &c, &mut io)),
        Command::Schema => commands::schema(&mut io),
        Command::Providers(args) => catalog().and_then(|c| commands::providers(args, &c, &mut io)),
        Command::Audit(cmd) => commands::audit(cmd, &mut io),
        Command::Report(args) => catalog().and_then(|c| commands::report(args, &c, &mut io)),
        Command::Discover(args) => catalog().and_then(|c| commands::discover(args, &c, &mut io)),
        Command::Watch(args) => catalog().and_then(|c| commands::watch(args, &c, &mut io)),
        Command::Completions(args) => commands::completions(args, &mut io),
        Command::Man => commands::man(&mut io),
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
            match err.downcast_ref::<commands::Refusal>() {
                // Refused input: nothing was changed, and the message says why.
                Some(refusal) => {
                    let _ = refusal.print(io.stderr);
                    ExitStatus::Invalid
                }
                None => {
                    eprintln!("error: {err:#}");
                    ExitStatus::Failure
                }
            }
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
