//! Names the commit rekey is built from, for `rekey --version`: `REKEY_COMMIT`
//! when the build sets it (a container build from a source archive has no
//! `.git`), else `git rev-parse HEAD`, else `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// A path `git rev-parse --git-path` gives, made absolute.
fn git_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    Some(if path.is_absolute() {
        path
    } else {
        std::env::current_dir().ok()?.join(path)
    })
}

fn main() {
    println!("cargo:rerun-if-env-changed=REKEY_COMMIT");
    let given = std::env::var("REKEY_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given.or_else(|| {
        let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Built again when HEAD moves: HEAD itself, the branch it names, or the
        // packed refs a `git gc` moves it into.
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(path) = git_path(&name).filter(|p| p.exists()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        Some(commit)
    });
    println!(
        "cargo:rustc-env=REKEY_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
