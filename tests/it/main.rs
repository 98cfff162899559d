//! The one integration test binary. Each module tests through a boundary: the CLI
//! (`rekey` as a process), the loader (library API, property tests), and the real
//! services started by `scripts/services`.

mod answer_props;
mod audit;
mod canary;
mod chaos;
mod ci_examples;
mod cli_plan;
mod contract;
mod discover;
mod engine;
mod exec;
mod hostile;
mod http_contracts;
mod http_providers;
mod http_stubs;
mod hygiene;
mod infra_common;
mod journal;
mod lab;
mod layers;
mod loader_props;
mod manual;
mod notify;
mod own_pg;
mod pg;
mod protocol;
mod providers_aws;
mod providers_hosts;
mod providers_sql;
mod providers_vault;
mod rate_limits;
mod rate_servers;
mod schedule;
mod security;
mod services;
mod shared_journal;
mod sinks;
mod store_vault;
mod support;
mod validation;
mod watch;
