//! Workspace integration tests: one binary, one module per concern. They
//! belong to the `larder-cli` package so that they can run the real `larder`
//! binary; shared helpers live in `support` and, for build tests, `drvs`.

#![allow(clippy::unwrap_used, clippy::print_stderr, unreachable_pub)]

mod bad_input;
mod cli;
mod drvs;
mod faults;
mod goals;
mod load;
mod local_store;
mod pathlocks;
mod sandbox;
mod scenarios;
mod soak;
mod support;
