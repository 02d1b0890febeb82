//! Validated, typed daemon configuration built from the command line (no I/O).
pub struct Config;
