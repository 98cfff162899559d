//! The CI, cron and Kubernetes examples (`examples/ci/`, `examples/hygiene/`,
//! `Containerfile`) run the commands they show: the commands are read out of
//! the example files and executed against the real binary (and OpenBao), with
//! only the paths a container or a CI runner would mount mapped to a
//! temporary directory.

use crate::infra_common::{Case, bao};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn example(path: &str) -> String {
    std::fs::read_to_string(crate::support::repo_root().join(path)).unwrap()
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&example(path)).unwrap()
}

/// A directory holding `rekey` (the binary under test), for PATH.
fn bin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_rekey"), bin.join("rekey")).unwrap();
    bin
}

/// Runs `command` with `sh -c` in `cwd`, with nothing but PATH (the binary
/// first) and `env`: no Vault token, no credential unless given.
fn sh(cwd: &Path, bin: &Path, command: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new("sh");
    cmd.env_clear()
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .current_dir(cwd)
        .args(["-c", command]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The GitHub Actions step named `name`, and the workflow's environment.
fn github_step(name: &str) -> (String, Vec<(String, String)>) {
    let doc = yaml("examples/ci/github-actions.yml");
    let job = &doc["jobs"]["plan"];
    let run = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}"))["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let env = job["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (run, env)
}

#[test]
fn the_ci_preview_runs_the_workflows_plan_command_offline_and_writes_the_comment() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::support::repo_root();
    let bin = bin_dir(dir.path());
    // A checkout: the examples, and playbooks (two shipped ones, one broken).
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).unwrap();
    std::fs::create_dir(dir.path().join("playbooks")).unwrap();
    for p in ["hygiene-90d.yaml", "demo.yaml"] {
        std::fs::copy(
            root.join("playbooks").join(p),
            dir.path().join("playbooks").join(p),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("playbooks/broken.yaml"),
        "version: 1\nname: broken\nvault: { address: \"${VAULT_ADDR}\" }\nproviders: {}\ncredentials:\n  - { id: x, provider: nowhere, vault_path: a/b }\n",
    )
    .unwrap();

    // GitHub Actions: the Plan step's command, its file list as the
    // `Changed playbooks` step would give it, the job's environment (no secret).
    let (run, env) = github_step("Plan");
    assert_eq!(
        run,
        "sh examples/ci/plan-preview.sh plan-comment.md ${{ steps.changed.outputs.files }}"
    );
    let (changed, _) = github_step("Changed playbooks");
    assert!(changed.contains("git diff --name-only"), "{changed}");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(env.iter().all(|(k, _)| !k.contains("TOKEN")), "{env:?}");
    let valid = run.replace(
        "${{ steps.changed.outputs.files }}",
        "playbooks/hygiene-90d.yaml playbooks/demo.yaml",
    );
    let (code, _, err) = sh(dir.path(), &bin, &valid, &env);
    assert_eq!(code, 0, "valid playbooks with work to do pass: {err}");
    let comment = std::fs::read_to_string(dir.path().join("plan-comment.md")).unwrap();
    assert!(comment.starts_with("<!-- rekey-plan-preview -->\n## rekey plan preview"));
    assert!(
        comment.contains("### `playbooks/hygiene-90d.yaml`"),
        "{comment}"
    );
    assert!(comment.contains("### `playbooks/demo.yaml`"), "{comment}");
    assert!(comment.contains("age unknown until --live"), "{comment}");
    assert!(
        err.contains("playbooks/demo.yaml: rekey plan exit 10"),
        "{err}"
    );
    // The same plan as `rekey plan --format markdown` prints.
    let direct = crate::support::rekey()
        .env("VAULT_ADDR", "https://vault.example.invalid")
        .args(["plan", "playbooks/demo.yaml", "--format", "markdown"])
        .run();
    assert!(comment.contains(direct.stdout.trim()), "{}", direct.stdout);

    let with_broken = run.replace(
        "${{ steps.changed.outputs.files }}",
        "playbooks/demo.yaml playbooks/broken.yaml",
    );
    let (code, _, _) = sh(dir.path(), &bin, &with_broken, &env);
    assert_eq!(code, 1, "an invalid playbook fails the job");
    let comment = std::fs::read_to_string(dir.path().join("plan-comment.md")).unwrap();
    assert!(
        comment.contains("**Invalid** (`rekey plan` exit 2)"),
        "{comment}"
    );
    assert!(
        comment.contains("nowhere"),
        "the diagnostics are in the comment: {comment}"
    );

    // GitLab CI runs the same script with the same arguments, posts the same file.
    let gitlab = yaml("examples/ci/gitlab-ci.yml");
    let job = &gitlab["rekey-plan"];
    let script: Vec<&str> = job["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        script
            .iter()
            .any(|l| l.contains("sh examples/ci/plan-preview.sh plan-comment.md $files")),
        "{script:?}"
    );
    assert!(script.iter().any(|l| l.contains("body@plan-comment.md")));
    assert_eq!(
        job["variables"]["VAULT_ADDR"],
        "https://vault.example.invalid"
    );
    let (code, _, err) = sh(
        dir.path(),
        &bin,
        "files='playbooks/demo.yaml'; status=0; sh examples/ci/plan-preview.sh plan-comment.md $files || status=$?; exit $status",
        &[("VAULT_ADDR", "https://vault.example.invalid")],
    );
    assert_eq!(code, 0, "{err}");
}

/// A hygiene playbook on the sandbox, as the ConfigMap would hold it.
fn hygiene_playbook(case: &Case, state: &Path) -> String {
    format!(
        "version: 1\nname: hygiene-PREFIX\nincident: {{ mode: routine }}\nvault: {{ address: \"${{VAULT_ADDR}}\", staging_prefix: PREFIX/staging }}\ndefaults: {{ max_age: 90d }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {}/keys.json, latency: 1ms }} }}\ncredentials:\n  - {{ id: api, provider: keys, account: a, vault_path: PREFIX/api }}\n  - {{ id: web, provider: keys, account: b, vault_path: PREFIX/web }}\n",
        state.display()
    )
    .replace("PREFIX", &case.prefix)
}

fn versions(case: &Case) -> Vec<u64> {
    ["api", "web"]
        .iter()
        .map(|p| {
            bao(
                &case.env,
                "GET",
                &format!("secret/metadata/{}/{p}", case.prefix),
                None,
            )
            .1["data"]["current_version"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn the_cronjobs_container_command_line_runs_hygiene_and_a_second_run_rotates_nothing() {
    let case = Case::new();
    case.seed("api", "cron-old-api", None);
    case.seed("web", "cron-old-web", None);
    let doc = yaml("examples/hygiene/cronjob.yaml");
    assert_eq!(doc["kind"], "CronJob");
    let pod = &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    // The image's entrypoint is the rekey binary, as the non-root user the
    // CronJob runs as: its args are rekey's arguments.
    let containerfile = example("Containerfile");
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/rekey\"]"));
    assert!(containerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(containerfile.contains(&format!(
        "USER {0}:{0}",
        pod["securityContext"]["runAsUser"]
    )));
    assert!(container["command"].is_null(), "the entrypoint is kept");

    // The mounts, mapped into a temporary directory: the ConfigMap holds the
    // playbook, the volume the journal.
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let at = m["mountPath"].as_str().unwrap().to_owned();
            let local = case.dir.path().join(m["name"].as_str().unwrap());
            std::fs::create_dir_all(&local).unwrap();
            (at, local)
        })
        .collect();
    for a in &mut args {
        for (at, local) in &mounts {
            if let Some(rest) = a.strip_prefix(at.as_str()) {
                *a = format!("{}{rest}", local.display());
            }
        }
    }
    let playbook_at = PathBuf::from(&args[1]);
    let state = case.dir.path().join("sandbox");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(&playbook_at, hygiene_playbook(&case, &state)).unwrap();
    let envs: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // The Secret gives VAULT_ADDR and the Vault credential.
    let container_run = || {
        let mut cmd = crate::support::rekey()
            .env("VAULT_ADDR", &case.env["VAULT_ADDR"])
            .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
            .args(&args);
        for (k, v) in &envs {
            cmd = cmd.env(k, v);
        }
        cmd.run()
    };
    let first = container_run();
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let summary: Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(summary["results"].as_array().unwrap().len(), 2, "{summary}");
    assert_eq!(versions(&case), [2, 2]);
    // Next week's run, straight after: nothing is older than 90 days.
    let second = container_run();
    assert_eq!(second.code, 0, "{}", second.stderr);
    let summary: Value = serde_json::from_str(&second.stdout).unwrap();
    assert_eq!(summary["not_due"].as_array().unwrap().len(), 2, "{summary}");
    assert_eq!(versions(&case), [2, 2], "OpenBao's versions are unchanged");
}

#[test]
fn the_crontab_lines_run_as_written() {
    let case = Case::new();
    case.seed("api", "crontab-old-api", None);
    case.seed("web", "crontab-old-web", None);
    let dir = case.dir.path();
    let bin = bin_dir(dir);
    // /etc/rekey and /var/lib/rekey, /var/log/rekey mapped into the test's directory.
    let etc = dir.join("etc");
    let state = dir.join("state");
    let log = dir.join("log");
    for d in [&etc, &state, &log] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        etc.join("hygiene-90d.yaml"),
        hygiene_playbook(&case, &state),
    )
    .unwrap();
    std::fs::write(
        etc.join("env"),
        format!(
            "export VAULT_ADDR={} VAULT_TOKEN={}\n",
            case.env["VAULT_ADDR"], case.env["VAULT_TOKEN"]
        ),
    )
    .unwrap();
    let crontab = example("examples/hygiene/crontab");
    let jobs: Vec<String> = crontab
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" && "))
        .map(|l| {
            // Five schedule fields, then the command.
            let command = l.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
            command
                .replace("/etc/rekey", &etc.display().to_string())
                .replace("/var/lib/rekey", &state.display().to_string())
                .replace("/var/log/rekey", &log.display().to_string())
        })
        .collect();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    // The weekly run, the report after it, the daily watch.
    let (code, out, err) = sh(dir, &bin, &jobs[0], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let ran = std::fs::read_to_string(log.join("hygiene.jsonl")).unwrap();
    let summary: Value = serde_json::Deserializer::from_str(&ran)
        .into_iter::<Value>()
        .last()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}: {ran}"));
    assert_eq!(summary["results"].as_array().unwrap().len(), 2, "{summary}");
    let (code, out, err) = sh(dir, &bin, &jobs[1], &[]);
    assert_eq!(code, 0, "nothing is overdue after the run: {out}\n{err}");
    let report = std::fs::read_to_string(log.join("report.md")).unwrap();
    assert!(report.contains("| `api` | ok |"), "{report}");
    let (code, out, err) = sh(dir, &bin, &jobs[2], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("crontab-old"), "{out}");
}

#[test]
fn completions_man_page_and_version_come_from_the_cli_definition() {
    let version = crate::support::rekey().args(["--version"]).run();
    assert_eq!(version.code, 0);
    assert!(version.stdout.starts_with("rekey "), "{}", version.stdout);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(crate::support::repo_root())
        .output()
        .unwrap();
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
    assert!(
        version.stdout.contains(&format!("(commit {commit})")),
        "{} vs {commit}",
        version.stdout
    );
    for (shell, needle) in [
        ("bash", "complete -F _rekey"),
        ("zsh", "#compdef rekey"),
        ("fish", "complete -c rekey"),
    ] {
        let out = crate::support::rekey().args(["completions", shell]).run();
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains(needle), "{shell}");
        for sub in ["discover", "report", "watch", "max-age"] {
            assert!(out.stdout.contains(sub), "{shell} completes {sub}");
        }
    }
    let man = crate::support::rekey().args(["man"]).run();
    assert_eq!(man.code, 0);
    assert!(man.stdout.contains(".TH rekey 1"), "roff with a title");
    for sub in ["discover", "report", "watch", "completions"] {
        assert!(man.stdout.contains(sub), "the man page names {sub}");
    }
}
