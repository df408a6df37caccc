//! Workspace integration tests: one binary, one module per concern.

mod pathlocks;
