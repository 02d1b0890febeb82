//! The udp backend (spec 9.3).
pub mod packet;
