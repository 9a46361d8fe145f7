//! Integration tests: the real binary on loopback, driven by real clients.

mod delivery;
mod durability;
mod harness;
mod ingress;
