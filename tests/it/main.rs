//! The one integration test binary. Each module tests through a boundary: the CLI
//! (`rekey` as a process), the loader (library API, property tests), and the real
//! services started by `scripts/services`.

mod cli_plan;
mod engine;
mod exec;
mod hostile;
mod journal;
mod lab;
mod loader_props;
mod manual;
mod services;
mod sinks;
mod store_vault;
mod support;
mod validation;
