//! `rekey audit verify|show|export|hmac`: the audit trail, checked and read.

use super::{Io, Refusal, print_problem};
use crate::cli::{AuditCommand, AuditFormat};
use crate::exit::ExitStatus;
use anyhow::{Context, Result};

pub fn audit(cmd: &AuditCommand, io: &mut Io) -> Result<ExitStatus> {
    use crate::audit::report::{self, Entry, Filter};
    let file = match cmd {
        AuditCommand::Verify(a) | AuditCommand::Hmac(a) => &a.file,
        AuditCommand::Show(a) | AuditCommand::Export(a) => &a.trail.file,
    };
    let mut entries = Vec::new();
    // `hmac`: the value's HMAC under the trail's key, looked for while the trail
    // is read (one line in memory at a time, as for `verify`).
    let hmac = match cmd {
        AuditCommand::Hmac(_) => Some(value_hmac(file)?),
        _ => None,
    };
    let keep_entries = matches!(cmd, AuditCommand::Show(_) | AuditCommand::Export(_));
    let filter = match cmd {
        AuditCommand::Show(a) | AuditCommand::Export(a) => Filter {
            credentials: a.credential.clone(),
            runs: a.run.clone(),
        },
        _ => Filter::default(),
    };
    let verdict = crate::audit::verify_file(file, |_, map| {
        if let Some(hmac) = &hmac {
            if map.get("secret_hmac").and_then(|v| v.as_str()) == Some(hmac.as_str()) {
                entries.push(Entry::from_line(&map));
            }
        } else if keep_entries {
            let entry = Entry::from_line(&map);
            if filter.keeps(&entry) {
                entries.push(entry);
            }
        }
    })
    .map_err(|e| {
        Refusal::new(format!(
            "cannot read the audit trail {}: {e}",
            file.display()
        ))
    })?;
    let shown = file.display();
    let complain = |io: &mut Io| -> Result<()> {
        for note in &verdict.notes {
            writeln!(io.stderr, "note: {shown}: {note}")?;
        }
        if let Some(p) = &verdict.problem {
            print_problem(
                io.stderr,
                &format!("{shown}: line {}: {}", p.line, p.reason.escape_debug()),
                Some(&format!(
                    "the trail was changed after rekey wrote it (or a write was cut short): keep this copy as evidence and compare it with the collector's copy (--audit-sink); lines before {} are intact",
                    p.line
                )),
            )?;
        }
        Ok(())
    };
    let status = if verdict.ok() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    };
    match cmd {
        AuditCommand::Verify(_) => {
            complain(io)?;
            if verdict.ok() {
                writeln!(
                    io.stdout,
                    "{shown}: {} lines verified; last line sha256 {}",
                    verdict.lines, verdict.last
                )?;
            }
        }
        AuditCommand::Show(a) | AuditCommand::Export(a) => {
            let default = if matches!(cmd, AuditCommand::Show(_)) {
                AuditFormat::Text
            } else {
                AuditFormat::Json
            };
            complain(io)?;
            match a.format.unwrap_or(default) {
                AuditFormat::Text => report::write_text(&entries, io.stdout)?,
                AuditFormat::Json => report::write_json(&entries, &verdict, io.stdout)?,
                AuditFormat::Csv => report::write_csv(&entries, io.stdout)?,
            }
        }
        AuditCommand::Hmac(_) => {
            writeln!(io.stdout, "{}", hmac.as_deref().unwrap_or_default())?;
            let found = entries.len();
            for e in &entries {
                writeln!(
                    io.stdout,
                    "  line {}: {} {} {} {} {}",
                    e.seq,
                    e.ts,
                    e.run,
                    e.credential.as_deref().unwrap_or("-"),
                    e.event,
                    e.action
                )?;
            }
            if found == 0 {
                writeln!(io.stderr, "no line of {shown} refers to this value")?;
            }
            complain(io)?;
        }
    }
    Ok(status)
}

/// The HMAC under trail `file`'s key of the value on stdin, as the trail's
/// `secret_hmac` fields hold it.
fn value_hmac(file: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let key_path = crate::audit::key_path(file);
    let key = match std::fs::read(&key_path) {
        Ok(k) if k.len() == 32 => k,
        _ => {
            return Err(Refusal::new(format!(
                "no trail key at {} (the trail's HMAC key, created with it)",
                key_path.display()
            ))
            .into());
        }
    };
    let mut value = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .take(1 << 20)
        .read_to_string(&mut value)
        .context("cannot read the value from stdin")?;
    // One trailing newline is the shell's (`echo`), not the value's.
    let trimmed = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value);
    Ok(format!(
        "{}{}",
        crate::audit::HMAC_PREFIX,
        crate::secret::Secret::new(trimmed).fingerprint(&key)
    ))
}
