//! Integration tests: the real binary on loopback, driven by real clients.

mod clients;
mod cluster;
mod content;
mod delivery;
mod durability;
mod hardening;
mod harness;
mod ingress;
mod ops;
mod proxy;
