//! The queue's pure core: what becomes of a recipient after an attempt (`decision`), the retry
//! maths (`schedule`), the limits of an egress path (`shaping`), a site's reaction to throttling
//! replies (`throttle`), MTA-STS records and policies (`sts`), a destination's ready queue in
//! priority lanes (`ready`), the queue's shape by age (`shape`) and the hierarchical timer wheel
//! (`wheel`) that holds every pending recipient's next attempt on a core. Nothing here reads a
//! clock or does I/O.

pub mod decision;
pub mod ready;
pub mod schedule;
pub mod shape;
pub mod shaping;
pub mod sts;
pub mod throttle;
pub mod tlsrpt;
pub mod wheel;
