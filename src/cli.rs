//! The command line (clap). Parsing only: commands live in `commands`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `rekey --version`: the release and the commit it was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("REKEY_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(name = "rekey", version = VERSION, about = "Credential rotation orchestrator for post-breach response", long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Colours on stderr.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
    /// A directory of provider files (`*.yaml`) that add to or replace the
    /// shipped ones, e.g. in-house declarative HTTP providers.
    #[arg(long, global = true, value_name = "DIR", env = crate::env_vars::REKEY_PROVIDERS)]
    pub providers: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a playbook and show what a run would do: order, steps, requests, ETA.
    Plan(PlanArgs),
    /// Rotate the selected credentials of a playbook.
    Run(RunArgs),
    /// Finish an interrupted run: reconcile with the real state, then complete it.
    Resume(ResumeArgs),
    /// Undo a finished routine-mode run (breach-mode runs are never undone).
    Rollback(RollbackArgs),
    /// Show a run's credentials and what a human must do for quarantined ones.
    Status(StatusArgs),
    /// Work on shared runs (a `postgres://` journal): take the credentials of
    /// this runner's zones whose dependencies are done, rotate them, repeat.
    Runner(RunnerArgs),
    /// Print the JSON Schema of playbooks (for editors).
    Schema,
    /// List the provider types this rekey knows.
    Providers(ProvidersArgs),
    /// Check and read the tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The inventory of a playbook: each credential's age, last rotation, live
    /// keys at the provider, and whether it is overdue for its max_age.
    Report(ReportArgs),
    /// Write a draft playbook from what exists: a Vault/OpenBao KV mount, the
    /// accounts and keys of provider instances, secret-scanner reports.
    Discover(DiscoverArgs),
    /// Ask providers whether keys a run retired were used after their
    /// retirement (exit 11 and a notification when one was).
    Watch(WatchArgs),
    /// Print shell completions for rekey.
    Completions(CompletionsArgs),
    /// Print rekey's man page (roff).
    Man,
}

/// A duration as the playbook writes them (`90d`, `12h`, `30m`).
fn duration(text: &str) -> Result<std::time::Duration, String> {
    crate::doc::rate::parse_duration(text)
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The playbook file.
    pub playbook: PathBuf,
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Overrides every credential's max_age (e.g. `90d`).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub max_age: Option<std::time::Duration>,
    /// Journal that recorded the runs (for each credential's last rotation).
    #[arg(long = "journal", env = crate::env_vars::REKEY_JOURNAL, default_value = ".rekey/journal.db")]
    pub journal: PathBuf,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Exit 10 when a credential is overdue (older than its max_age, or of
    /// unknown age), 0 when none is.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    Markdown,
    Csv,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Walk this folder of the Vault/OpenBao KV v2 mount (no value: the whole
    /// mount). Logs in with VAULT_TOKEN at --vault-addr.
    #[arg(long, value_name = "PREFIX", num_args = 0..=1, default_missing_value = "")]
    pub from_vault: Option<String>,
    /// Vault/OpenBao address.
    #[arg(long, value_name = "URL", env = crate::env_vars::VAULT_ADDR)]
    pub vault_addr: Option<String>,
    /// The KV version 2 mount.
    #[arg(long, value_name = "MOUNT", default_value = "secret")]
    pub mount: String,
    /// Stop the walk after this many entries.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub max_entries: usize,
    /// Do not descend deeper than this many folders below the prefix.
    #[arg(long, value_name = "N", default_value_t = 12)]
    pub max_depth: usize,
    /// Vault requests per second, at most.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub vault_rate: u32,
    /// A provider instance to list accounts and keys of, and to map entries
    /// to: `NAME=TYPE` (repeatable).
    #[arg(long = "instance", value_name = "NAME=TYPE")]
    pub instances: Vec<String>,
    /// A setting of an instance: `NAME.KEY=VALUE` (repeatable).
    #[arg(long = "setting", value_name = "NAME.KEY=VALUE")]
    pub settings: Vec<String>,
    /// Where an instance's admin credential is: `NAME=env:VAR` or
    /// `NAME=vault:PATH` (repeatable).
    #[arg(long = "admin", value_name = "NAME=env:VAR|vault:PATH")]
    pub admins: Vec<String>,
    /// A gitleaks JSON report (`gitleaks detect --report-format json`), repeatable.
    #[arg(long = "gitleaks", value_name = "FILE")]
    pub gitleaks: Vec<PathBuf>,
    /// A trufflehog JSON report (`trufflehog ... --json`, one finding a line), repeatable.
    #[arg(long = "trufflehog", value_name = "FILE")]
    pub trufflehog: Vec<PathBuf>,
    /// The compromised vendor: entries tied to it are marked `tied_to` it and
    /// the draft is a breach-mode playbook (repeatable).
    #[arg(long, value_name = "VENDOR")]
    pub compromised: Vec<String>,
    /// The draft's `name:`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Write the draft here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Run id (default: the latest run that retired keys).
    pub run: Option<String>,
    /// Journal that recorded the run.
    #[arg(long = "journal", env = crate::env_vars::REKEY_JOURNAL, default_value = ".rekey/journal.db")]
    pub journal: PathBuf,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `rekey audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain (and the head record beside it); exit 1 naming the first bad line.
    Verify(AuditVerifyArgs),
    /// Per-credential timeline of the trail (text by default).
    Show(AuditShowArgs),
    /// The trail as JSON (default) or CSV, for an incident report or a SIEM.
    Export(AuditShowArgs),
    /// Read a value on stdin and print its HMAC under the trail's key, and the lines
    /// that refer to it (the value is never taken as an argument: `ps` would show it).
    Hmac(AuditFileArgs),
}

#[derive(Debug, Args)]
pub struct AuditFileArgs {
    /// The trail (default: audit.jsonl beside the default journal).
    #[arg(env = crate::env_vars::REKEY_AUDIT, default_value = ".rekey/audit.jsonl")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub trail: AuditFileArgs,
    /// Verify the chains a shared journal keeps in its database instead of a
    /// file (`postgres://...`; password from REKEY_JOURNAL_PASSWORD).
    #[arg(long, value_name = "URL")]
    pub journal: Option<std::ffi::OsString>,
    /// With --journal: only this run's chain (default: every run's).
    #[arg(long, value_name = "ID", requires = "journal")]
    pub run: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AuditFormat {
    Text,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct AuditShowArgs {
    #[command(flatten)]
    pub trail: AuditFileArgs,
    /// Only this credential (repeatable).
    #[arg(long, value_name = "ID")]
    pub credential: Vec<String>,
    /// Only this run (repeatable).
    #[arg(long, value_name = "RUN")]
    pub run: Vec<String>,
    /// Output format (`show`: text; `export`: json).
    #[arg(long, value_enum)]
    pub format: Option<AuditFormat>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

/// Which credentials to act on. Values of one flag are alternatives; different
/// flags narrow each other.
#[derive(Debug, Args, Clone, Default)]
pub struct SelectionArgs {
    /// Only credentials tied to this compromised system (repeatable).
    #[arg(long, value_name = "NAME")]
    pub compromised: Vec<String>,
    /// Only credentials with this tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only the credential with this id (repeatable).
    #[arg(long, value_name = "ID")]
    pub only: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The playbook file (`-`: read it from stdin).
    pub playbook: PathBuf,
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit 10 when the plan has work to do, 0 when it has none.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Also check, read-only, against Vault and the providers: Vault login and
    /// mount, current versions, leftover staging entries, provider preflights,
    /// and credential ages (only what is due under max_age is planned).
    #[arg(long)]
    pub live: bool,
    /// Overrides every credential's max_age (e.g. `90d`).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub max_age: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct ProvidersArgs {
    /// Output format on stdout (markdown is not offered here).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The playbook file (a file: `resume` and `rollback` read it again).
    pub playbook: PathBuf,
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Overrides every credential's max_age (e.g. `90d`): only credentials
    /// older than this (or of unknown age) are rotated.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub max_age: Option<std::time::Duration>,
    /// With a shared journal (`postgres://`): only record the run and its
    /// credentials, print its id and the `rekey runner` command for each zone,
    /// and leave the work to the runners (by default `run` also works as a runner
    /// of every zone until the run is done).
    #[arg(long)]
    pub no_work: bool,
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The shared journal: `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=...]`
    /// (password from REKEY_JOURNAL_PASSWORD).
    #[arg(long = "journal", env = crate::env_vars::REKEY_JOURNAL, value_name = "URL")]
    pub journal: std::ffi::OsString,
    /// A zone whose credentials this runner takes (repeatable): the `zone:` of
    /// the playbook's provider instances (`default` when they name none).
    #[arg(long = "zone", value_name = "ZONE", required = true)]
    pub zones: Vec<String>,
    /// Exit once no run has work left in these zones (default: wait for more).
    #[arg(long)]
    pub once: bool,
    /// Only this run (default: every running run with work in these zones).
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// How long a claim on a credential (and its lease and Vault lock) lasts
    /// without a heartbeat: another runner of the zone takes it over after that.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "30s")]
    pub lease: std::time::Duration,
    /// Also send each audit line to `stdout` or an http(s):// collector (repeatable).
    #[arg(long = "audit-sink", value_name = "SINK")]
    pub audit_sinks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Run id (default: the latest run).
    pub run: Option<String>,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Run id (default: the latest unfinished run).
    pub run: Option<String>,
    #[command(flatten)]
    pub journal: JournalArgs,
    #[command(flatten)]
    pub operator: OperatorArgs,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Run id to undo.
    pub run: String,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Where runs are recorded; shared by `run`, `resume`, `rollback` and `status`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Journal file (durable run state).
    #[arg(long = "journal", env = crate::env_vars::REKEY_JOURNAL, default_value = ".rekey/journal.db")]
    pub path: PathBuf,
    /// Audit trail file (default: audit.jsonl beside the journal).
    #[arg(long = "audit-file", env = crate::env_vars::REKEY_AUDIT)]
    pub audit: Option<PathBuf>,
    /// Also send each audit line to `stdout` or an http(s):// collector (repeatable).
    /// The file is always written first; a collector that fails never stops a run.
    #[arg(long = "audit-sink", value_name = "stdout|URL")]
    pub audit_sinks: Vec<String>,
    /// Start a new audit trail although the journal has runs and the trail is gone
    /// (`run`, `resume`, `rollback`); without it rekey refuses.
    #[arg(long)]
    pub new_trail: bool,
}

/// The answer to a manual step waiting for an operator. Never a value on the
/// command line: every local user can read a process's arguments.
#[derive(Debug, Args, Default)]
pub struct OperatorArgs {
    /// The manual credential the value is for (needed when several wait).
    #[arg(long, value_name = "ID")]
    pub credential: Option<String>,
    /// Read the new value from stdin (one trailing newline is dropped).
    #[arg(long, conflicts_with_all = ["value_file", "confirm"])]
    pub value_stdin: bool,
    /// Read the new value from this file (one trailing newline is dropped).
    #[arg(long, value_name = "FILE", conflicts_with = "confirm")]
    pub value_file: Option<PathBuf>,
    /// Confirm a revoke-only manual step (`confirm_only: true`) was done.
    #[arg(long)]
    pub confirm: bool,
}
