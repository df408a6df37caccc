//! Workspace integration tests: one binary, one module per concern. They
//! belong to the `larder-cli` package so that they can run the real `larder`
//! binary; shared helpers live in `support`.

#![allow(clippy::unwrap_used, clippy::print_stderr, unreachable_pub)]

mod bad_input;
mod cli;
mod faults;
mod goals;
mod local_store;
mod pathlocks;
mod sandbox;
mod support;
