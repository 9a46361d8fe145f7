//! Integration tests: the real binary on loopback, driven by real clients.

mod durability;
mod harness;
mod ingress;
