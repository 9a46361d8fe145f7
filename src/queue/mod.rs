//! Scheduling: pure retry maths (`schedule`) and the hierarchical timer wheel (`wheel`) that
//! holds every pending recipient's next attempt on a core.

pub mod schedule;
pub mod wheel;
