//! A provider definition file (`providers/*.yaml`, or one of `--providers DIR`)
//! through the catalog loader: the type's fields, then its `http:` section
//! (structure, templates dry-rendered, positions and hints).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekey::catalog::Catalog;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // The loader refuses a file not named after its type: name it after the
    // `name:` line, so inputs get past that check to the rest.
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("name:"))
        .map(|n| n.trim().trim_matches(['"', '\'']))
        .filter(|n| !n.is_empty() && !n.contains(['/', '\0']))
        .unwrap_or("fuzz");
    let path = format!("fuzz/{name}.yaml");
    if let Ok(catalog) = Catalog::parse(&[(path.as_str(), text)]) {
        for t in catalog.types.values() {
            let _ = t.http_definition();
            let _ = t.rate();
            let _ = t.latency();
        }
    }
});
