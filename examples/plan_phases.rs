//! Times each phase of loading and planning one playbook, for profiling:
//! `cargo run --release --example plan_phases -- PLAYBOOK`. The benchmark with goals
//! is `benches/plan_large.rs`; this shows where the time goes.

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: plan_phases PLAYBOOK");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let t = std::time::Instant::now();
    let mut root = rekey::doc::yaml::parse(&text).unwrap();
    println!("parse {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let env = |name: &str| std::env::var(name).ok();
    let p = rekey::playbook::interpolate::interpolate(&mut root, &env);
    println!("interpolate {:?} {}", t.elapsed(), p.len());
    let t = std::time::Instant::now();
    let raw = <rekey::playbook::model::RawPlaybook as serde::Deserialize>::deserialize(
        rekey::doc::de::NodeDe(&root),
    )
    .unwrap();
    println!("deserialize {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let pb = rekey::playbook::validate::validate(
        &raw,
        None,
        &[],
        &rekey::catalog::Catalog::load(None).unwrap(),
    )
    .unwrap()
    .build(raw);
    println!("validate {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let plan = rekey::plan::build("x", &pb, &Default::default());
    println!("plan {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut v = Vec::new();
    rekey::plan::render::json(&plan, &mut v).unwrap();
    println!("json {:?} {} MB", t.elapsed(), v.len() / 1_000_000);
    let t = std::time::Instant::now();
    let mut v = Vec::new();
    rekey::plan::render::text(&plan, &mut v).unwrap();
    println!("text {:?} {} MB", t.elapsed(), v.len() / 1_000_000);
}
