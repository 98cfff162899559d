//! The playbook loader on any bytes: parse, interpolate, validate, and render every
//! diagnostic (text and JSON), as `rekey plan` does with a bad file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    match name {
        "VAULT_ADDR" => Some("http://127.0.0.1:8200".into()),
        "TEAM" => Some("payments".into()),
        _ => None,
    }
}

fuzz_target!(|bytes: &[u8]| {
    if let Err(report) = rekey::playbook::load_bytes("fuzz.yaml", bytes, &env) {
        let _ = report.render(false);
        let _ = serde_json::to_string(&report.to_json());
    }
});
