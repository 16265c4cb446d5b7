//! Commands for people (not long-running roles): they reuse the webhook's planner and policy
//! matcher and reimplement neither.
pub mod inject;
