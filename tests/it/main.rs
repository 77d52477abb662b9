//! Integration tests against real servers: one binary, one shared platform (see `harness`).

mod cli;
mod harness;
mod platform;
