//! The positioned-document toolkit: YAML with line and column (`yaml`), serde over
//! it (`de`), diagnostics with snippets and fixes (`diagnostic`), rates and
//! durations (`rate`). Generic: playbooks and provider files both use it.

pub mod de;
pub mod diagnostic;
pub mod rate;
pub mod yaml;
