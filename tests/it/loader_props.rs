//! The loader never panics, whatever the bytes: arbitrary input, and the shipped
//! playbooks mutated (bytes flipped, lines dropped, duplicated or swapped).

use proptest::prelude::*;
use rekey::catalog::Catalog;
use rekey::doc::diagnostic::Report;
use rekey::playbook::Loaded;
use std::sync::LazyLock;

fn env(name: &str) -> Option<String> {
    (name == "VAULT_ADDR").then(|| "http://127.0.0.1:8200".to_owned())
}

/// The shipped catalog, loaded once for every case.
static CATALOG: LazyLock<Catalog> = LazyLock::new(|| Catalog::load(None).unwrap());

fn load_bytes(file: &str, bytes: &[u8]) -> Result<Loaded, Report> {
    rekey::playbook::load_bytes(file, bytes, &env, &CATALOG)
}

fn seeds() -> Vec<Vec<u8>> {
    crate::support::shipped_playbooks()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    SetByte(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    DropLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop::sample::select(vec![
        &b": "[..],
        b"- ",
        b"{",
        b"}",
        b"[",
        b"]",
        b"&a ",
        b"*a",
        b"<<: *a",
        b"!!binary ",
        b"'",
        b"\"",
        b"${",
        b"${X}",
        b"\n",
        b"\t",
        b"#",
        b"---\n",
        b"...",
        b"? ",
        b"|",
        b">",
        b"%YAML 1.2\n",
        b"\xff",
        b"\x00",
        b"1e999",
        b"-9223372036854775809",
        b"depends_on: [a]",
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<usize>(), tokens).prop_map(|(i, t)| Mutation::Insert(i, t.to_vec())),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::DropLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), 0usize..9).prop_map(|(i, n)| Mutation::Indent(i, n)),
    ]
}

pub(crate) fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    let len = bytes.len();
    match m {
        Mutation::SetByte(i, b) => bytes[i % len] = *b,
        Mutation::Insert(i, t) => {
            let at = i % (len + 1);
            bytes.splice(at..at, t.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let at = i % len;
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::DropLine(_)
        | Mutation::DuplicateLine(_)
        | Mutation::SwapLines(..)
        | Mutation::Indent(..) => {
            let mut lines: Vec<Vec<u8>> =
                bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            let n = lines.len();
            match m {
                Mutation::DropLine(i) => {
                    lines.remove(i % n);
                }
                Mutation::DuplicateLine(i) => {
                    let l = lines[i % n].clone();
                    lines.insert(i % n, l);
                }
                Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
                Mutation::Indent(i, k) => {
                    let l = &mut lines[i % n];
                    l.splice(0..0, std::iter::repeat_n(b' ', *k));
                }
                _ => {}
            }
            bytes = lines.join(&b'\n');
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn loader_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = load_bytes("fuzz.yaml", &bytes);
    }

    #[test]
    fn loader_survives_mutated_playbooks(seed in 0usize..16, mutations in prop::collection::vec(mutation(), 1..6)) {
        let seeds = seeds();
        let mut bytes = seeds[seed % seeds.len()].clone();
        for m in &mutations {
            bytes = apply(bytes, m);
        }
        if let Err(report) = load_bytes("mutated.yaml", &bytes) {
            // Every problem renders, and says where it is when it can.
            prop_assert!(report.has_errors());
            let rendered = report.render(false);
            prop_assert!(rendered.contains("mutated.yaml"));
        }
    }
}

#[test]
fn loader_survives_deep_nesting_and_alias_bombs() {
    let deep = "a: ".to_owned() + &"[".repeat(10_000) + &"]".repeat(10_000);
    assert!(load_bytes("deep.yaml", deep.as_bytes()).is_err());
    let deep_block: String = (0..5000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    assert!(load_bytes("deep2.yaml", deep_block.as_bytes()).is_err());
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..15 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{}", i - 1); 10].join(", ")
        ));
    }
    assert!(load_bytes("bomb.yaml", bomb.as_bytes()).is_err());
}
