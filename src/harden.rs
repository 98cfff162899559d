//! Process hardening at start, and the environment variables that hold secrets.
//!
//! rekey holds the Vault token and admin credentials in memory for the length of a
//! run. Other processes of the same user could read them from a core dump, with
//! ptrace, or from `/proc/<pid>/environ`; so, before anything else:
//!
//! - no core dumps (`RLIMIT_CORE` 0, soft and hard);
//! - not dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no ptrace attach by the same user,
//!   `/proc/<pid>/` files belong to root;
//! - every variable that holds a secret (rekey's own: `VAULT_TOKEN`,
//!   `VAULT_SECRET_ID`, `REKEY_AUDIT_AUTHORIZATION`; then those the playbook names:
//!   `token_env`, `secret_id_env`, admin and sink token `env`) is read once into
//!   memory ([`secret_env`] hands it out from there), removed from the environment
//!   and wiped where the kernel shows it: `/proc/<pid>/environ` reads the block the
//!   process started with, which `unsetenv` does not touch.
//!
//! Invariant: once [`take_env`] ran for a name, the value is in neither the
//! environment nor the initial environment block, and child processes (exec
//! plugins, reload commands) cannot inherit it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use zeroize::Zeroizing;

/// Values taken out of the environment, by variable name.
fn taken() -> &'static Mutex<HashMap<String, Zeroizing<String>>> {
    static TAKEN: OnceLock<Mutex<HashMap<String, Zeroizing<String>>>> = OnceLock::new();
    TAKEN.get_or_init(|| Mutex::new(HashMap::new()))
}

/// No core dumps, not dumpable. Call first thing in `main`. Failures are ignored:
/// the limits only shrink what can leak, and an unprivileged process can always
/// lower its own.
pub fn process() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit(2) reads the struct it is given.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) with PR_SET_DUMPABLE takes an integer argument only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// The value of secret variable `name`: what [`take_env`] took out of the
/// environment, else the environment itself (a name no one took yet).
pub fn secret_env(name: &str) -> Option<Zeroizing<String>> {
    if let Some(v) = taken().lock().ok()?.get(name) {
        return Some(v.clone());
    }
    crate::env_vars::get(name).map(Zeroizing::new)
}

/// Moves each of `names` that is set from the environment into rekey's memory,
/// and wipes it from the initial environment block. Only while this is the
/// process's one thread (then `remove_var` is sound); with other threads running
/// the values are still taken (read once), but left in the environment.
pub fn take_env<'a>(names: impl IntoIterator<Item = &'a str>) {
    let Ok(mut taken) = taken().lock() else {
        return;
    };
    let alone = only_thread();
    let block = initial_environment();
    for name in names {
        if taken.contains_key(name) || name.is_empty() || name.contains(['=', '\0']) {
            continue;
        }
        let Some(value) = crate::env_vars::get_os(name) else {
            continue;
        };
        let value = Zeroizing::new(value.to_string_lossy().into_owned());
        if alone {
            // SAFETY: `only_thread` just saw this thread alone in the process, and
            // it starts none before this returns: nothing reads or writes the
            // environment concurrently (the Rust 2024 precondition of remove_var).
            unsafe { remove(name, block) };
        }
        taken.insert(name.to_owned(), value);
    }
}

/// The variables `playbook` reads secrets from.
pub fn playbook_secret_env(playbook: &crate::playbook::Playbook) -> Vec<&str> {
    use crate::playbook::{Sink, VaultAuth};
    let mut names = Vec::new();
    match &playbook.vault.auth {
        VaultAuth::Token { env } => names.push(env.as_str()),
        VaultAuth::AppRole { secret_id_env, .. } => names.push(secret_id_env.as_str()),
    }
    for p in playbook.providers.values() {
        names.extend(p.admin.as_ref().and_then(env_of));
    }
    for c in &playbook.credentials {
        for sink in &c.sinks {
            if let Sink::Github { token, .. } = sink {
                names.extend(env_of(token));
            }
        }
    }
    for hook in &playbook.notify {
        if let crate::playbook::notify::Url::Env(var) = &hook.url {
            names.push(var);
        }
        names.extend(hook.authorization_env.as_deref());
    }
    names
}

fn env_of(source: &crate::playbook::AdminSource) -> Option<&str> {
    match source {
        crate::playbook::AdminSource::Env(var) => Some(var),
        crate::playbook::AdminSource::Vault(_) => None,
    }
}

/// Takes the variables `playbook` reads secrets from (see [`take_env`]); called
/// once the playbook is loaded, before any runtime starts.
pub fn take_playbook_env(playbook: &crate::playbook::Playbook) {
    take_env(playbook_secret_env(playbook));
}

/// Whether this is the process's only thread (`Threads:` of /proc/self/status).
/// A thread just joined (the playbook loader's) leaves the count a moment after
/// `join` returns, so a few short waits are allowed for it.
fn only_thread() -> bool {
    let alone = || {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .is_some_and(|n| n.trim() == "1")
        })
    };
    for _ in 0..50 {
        if alone() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

/// Where the kernel keeps the environment the process started with
/// (`env_start`, `env_end`: fields 50 and 51 of /proc/self/stat).
fn initial_environment() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let start = fields.get(50 - 3)?.parse().ok()?;
    let end = fields.get(51 - 3)?.parse().ok()?;
    (start < end).then_some((start, end))
}

/// Unsets `name` and, when its `NAME=value` string lies in the initial
/// environment block, overwrites that string with zeros.
///
/// # Safety
/// No other thread may read or write the environment meanwhile.
unsafe fn remove(name: &str, block: Option<(usize, usize)>) {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return;
    };
    // SAFETY: getenv(3) with a valid C string; the caller guarantees that no other
    // thread changes the environment while the pointer is used.
    let value = unsafe { libc::getenv(c_name.as_ptr()) };
    let entry = if value.is_null() {
        None
    } else {
        // SAFETY: getenv returned a pointer to a NUL-terminated value inside a
        // `NAME=value` string.
        let len = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes().len();
        let start = (value as usize).checked_sub(name.len() + 1);
        start.map(|s| (s, value as usize + len))
    };
    // SAFETY: the caller guarantees no concurrent access to the environment.
    unsafe { std::env::remove_var(name) };
    if let (Some((from, to)), Some((block_start, block_end))) = (entry, block)
        && from >= block_start
        && to <= block_end
    {
        // SAFETY: [from, to) is the `NAME=value` text of a variable of the initial
        // environment block: writable memory the kernel set up for the process
        // (the stack), no longer referenced by `environ` after remove_var, and
        // owned by no Rust value.
        unsafe { std::ptr::write_bytes(from as *mut u8, 0, to - from) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_environment_block_is_found() {
        let (start, end) = initial_environment().expect("a Linux /proc");
        assert!(start < end);
    }
}
