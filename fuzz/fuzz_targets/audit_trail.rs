//! An audit trail and its head record as `rekey audit verify|show|export` read
//! them (`audit/chain.rs`, `audit/report.rs`): the chain verified, every line that
//! holds turned into a timeline entry and rendered as text, JSON and CSV.
//!
//! The first byte picks the mode: raw bytes (a tampered or foreign file), or each
//! input line sealed into a valid chain first (so the fuzzer reaches the report
//! with arbitrary field values). Its low bit says whether the first line is a head
//! record.
//!
//! Oracles beyond "no panic": the verdict counts no more lines than the input
//! has, and a problem is named at a line after the last good one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekey::audit::chain::{self, GENESIS};
use rekey::audit::report::{self, Entry};
use serde_json::{Map, Value};

fn sealed(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = GENESIS.to_owned();
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        let mut map = match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(m)) => m,
            _ => {
                let mut m = Map::new();
                m.insert(
                    "event".into(),
                    Value::String(String::from_utf8_lossy(raw).into_owned()),
                );
                m
            }
        };
        map.shift_remove("hash");
        map.shift_remove("prev");
        map.insert("seq".into(), Value::from(i as u64 + 1));
        map.insert("prev".into(), Value::String(prev));
        let line = chain::seal(&serde_json::to_string(&map).unwrap());
        prev = chain::sha256_hex(line.as_bytes());
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    let (head, rest) = if mode & 1 == 1 {
        let cut = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        (
            chain::parse_head(&rest[..cut]),
            rest.get(cut + 1..).unwrap_or_default(),
        )
    } else {
        (None, rest)
    };
    let trail = if mode & 2 == 2 {
        sealed(rest)
    } else {
        rest.to_vec()
    };
    let mut entries = Vec::new();
    let verdict = chain::verify(&trail, head.as_ref(), |_, map| {
        entries.push(Entry::from_line(&map))
    });
    let newlines = trail.iter().filter(|b| **b == b'\n').count() as u64;
    assert!(verdict.lines <= newlines);
    assert_eq!(entries.len() as u64, verdict.lines);
    if let Some(problem) = &verdict.problem {
        assert!(problem.line >= 1);
    }
    if mode & 3 == 2 {
        assert!(verdict.ok(), "a sealed chain verifies: {verdict:?}");
    }
    let mut out = Vec::new();
    report::write_text(&entries, &mut out).unwrap();
    report::write_json(&entries, &verdict, &mut out).unwrap();
    report::write_csv(&entries, &mut out).unwrap();
});
