//! Every environment variable rekey reads, in one place: the constants below, and
//! the variables a playbook names (`vault.auth.token_env`, `secret_id_env`, an
//! admin credential's `env`, `${VAR}` in its text, an exec plugin's `env:` list),
//! all read through [`get`] and [`get_os`]; nothing else in rekey reads the
//! environment (`harden` takes the secret ones out of it, through `get`;
//! `tests/it/layers.rs` checks it).

/// Default variable holding the Vault token (`vault.auth.token_env` changes it).
pub const VAULT_TOKEN: &str = "VAULT_TOKEN";
/// Vault/OpenBao address for `rekey discover --from-vault` (`--vault-addr`
/// overrides it). Playbooks name theirs in `vault.address`, often `${VAULT_ADDR}`.
pub const VAULT_ADDR: &str = "VAULT_ADDR";
/// Default variable holding the AppRole secret-id (`vault.auth.secret_id_env`).
pub const VAULT_SECRET_ID: &str = "VAULT_SECRET_ID";
/// Log filter in `tracing` syntax (e.g. `rekey=debug`); overrides `-v`/`-q`.
pub const RUST_LOG: &str = "RUST_LOG";
/// Set to a non-empty value to disable colours (https://no-color.org).
pub const NO_COLOR: &str = "NO_COLOR";
/// Journal for `run`, `resume`, `rollback`, `status`: an SQLite file (default
/// `.rekey/journal.db` in the current directory) or a `postgres://` URL (a journal
/// shared by runners; only `status` reads one in this build); `--journal`
/// overrides it.
pub const REKEY_JOURNAL: &str = "REKEY_JOURNAL";
/// Password of the shared journal's PostgreSQL user (`--journal postgres://...`),
/// like libpq's `PGPASSWORD`; a journal URL never holds one. Held as a secret.
pub const REKEY_JOURNAL_PASSWORD: &str = "REKEY_JOURNAL_PASSWORD";
/// Audit trail file for `run`, `resume`, `rollback` and `audit` (default
/// `audit.jsonl` beside the journal); `--audit-file` overrides it.
pub const REKEY_AUDIT: &str = "REKEY_AUDIT";
/// Value of the `Authorization` header sent to an HTTP audit sink (e.g.
/// `Splunk <token>` or `Bearer <token>`); held as a secret, never logged.
pub const REKEY_AUDIT_AUTHORIZATION: &str = "REKEY_AUDIT_AUTHORIZATION";
/// Directory of extra provider files, like `--providers DIR` (which overrides it).
pub const REKEY_PROVIDERS: &str = "REKEY_PROVIDERS";
/// The OS user running rekey, named on every audit line and journal run
/// (`audit::Actor::from_os`); `LOGNAME` when unset.
pub const USER: &str = "USER";
/// The OS user, when `USER` is unset.
pub const LOGNAME: &str = "LOGNAME";
/// Handed on to a file sink's reload command, the only variable it gets.
pub const PATH: &str = "PATH";

/// rekey's own variables that hold secrets: never interpolated with `${VAR}`,
/// never passed to an exec plugin, removed from the environment once read
/// (`harden.rs`), whatever the playbook says. Read them with
/// `harden::secret_env`, not [`get`].
pub const SECRETS: &[&str] = &[
    VAULT_TOKEN,
    VAULT_SECRET_ID,
    REKEY_AUDIT_AUTHORIZATION,
    REKEY_JOURNAL_PASSWORD,
];

/// The value of variable `name`: one of the constants above, or a name the
/// playbook gives. `None` when unset or not Unicode.
pub fn get(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The value of variable `name` as the OS holds it (for values passed on to a
/// child process unchanged).
pub fn get_os(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name)
}
