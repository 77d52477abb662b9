//! Integration tests against real servers: one binary, one shared platform (see `harness`).

mod acme;
mod allowlist;
mod allowlist_faults;
mod api;
mod archive;
mod attack;
mod backup;
mod bind;
mod boundaries;
mod cli;
mod cloudflare;
mod ha;
mod ha_archive;
mod ha_cluster;
mod harness;
mod install;
mod isolation;
mod layers;
mod noisy;
mod pebble;
mod platform;
mod tenants;
