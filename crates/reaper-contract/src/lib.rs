//! The contract between Reaper's parts and its users, in one place: the API group, labels and
//! annotations ([`keys`]), and the `reaper` init's command line as the webhook writes it
//! ([`init`]). The init, the controller, the chart tests and the docs read these; no literal is
//! repeated elsewhere. Constants only, no dependencies (the init is std + libc).
#![no_std]
#![forbid(unsafe_code)]

pub mod init;
pub mod keys;
