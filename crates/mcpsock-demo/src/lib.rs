//! Servers for mcpsock's quick start, tests and conformance runs.

// Logging and sampling are deprecated by SEP-2577 (2026-07-28), but the
// conformance suite's earlier-revision scenarios exercise them.
#[allow(deprecated)]
pub mod conformance;
